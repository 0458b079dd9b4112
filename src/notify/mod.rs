//! Telling the owner what happened: the core's events delivered to the iPhone app (APNs),
//! ntfy and webhooks, from a durable outbox, off the engine's path.

pub mod apns;
