//! Embeds the browser client (`web-client/public`) in the `consult` binary, compressed
//! with brotli at build time, in debug builds too: the binary serves every page from
//! anywhere, with no files beside it (`web_root` still serves from disk instead, for
//! development). Cargo runs this again whenever a file of the directory changes.

fn main() {
    memory_serve::load_directory_with_embed("../web-client/public", true);
}
