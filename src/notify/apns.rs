//! The APNs provider: token-based authentication and HTTP/2 delivery to Apple.
