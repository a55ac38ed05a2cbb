//! Placeholder: filled by the faults test suite.
