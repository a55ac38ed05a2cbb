//! Placeholder: filled by the usage test suite.
