//! Integration tests of the host services, against real files, a real
//! Redis, a real SMTP server, a real HTTP server and `pdftotext`.

mod config;
mod files;
mod http;
mod kv;
mod mail;
mod pdf;
mod support;
mod trace;
