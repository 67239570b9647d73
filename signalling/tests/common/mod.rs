#![allow(dead_code)]
pub mod redis;
pub mod server;
