"""HTTP entry points: parse, call one use case, map the result. No business rules here."""
