-- Nothing to change on SQLite: its one writer already commits positions in order. The number is
-- kept so that both backends reach the same schema version with the same migration.
SELECT 1;
