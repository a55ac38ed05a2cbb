//! Placeholder: filled by the remote test suite.
