//! Tests of the engine core's decisions.
