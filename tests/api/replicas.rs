//! Multi-replica tests against a real Redis (written next).
