//! Placeholder: filled by the hostile test suite.
