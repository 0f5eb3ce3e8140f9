//! Earshot's integration tests: real HTTP against the gateway, real PostgreSQL, the real binary.

mod support;

mod botapi;

mod contract;
mod email;
mod intake;
mod lifecycle;
mod mailsrv;
mod outbox;
mod phone;
mod process;
mod store;
mod telegram;
mod web;
