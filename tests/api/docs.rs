//! Every docs/clock-rules.md example, run verbatim (written next).
