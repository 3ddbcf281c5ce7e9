"""The store owns every SQL statement and the migrations. Nothing else writes SQL."""
