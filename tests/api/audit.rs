//! The PostgreSQL audit trail end to end (written next).
