//! Table-driven and property tests of the policy engine.
