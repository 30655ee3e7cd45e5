//! Resolving the rules' `program` and `unit` selectors to what the kernel compares.
