#![allow(dead_code)]
pub mod media;
pub mod redis;
pub mod server;
