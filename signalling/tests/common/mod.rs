#![allow(dead_code)]
pub mod coturn;
pub mod media;
pub mod redis;
pub mod server;
