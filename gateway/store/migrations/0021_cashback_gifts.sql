-- Promotions, second part (issue 13): cashback credited after capture, and gifts on a holder's
-- registration and first payment. Filled in by the commits that follow.
SELECT 1;
