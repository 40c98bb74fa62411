DROP TABLE audit_dead_letters;
