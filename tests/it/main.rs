//! tarn's integration tests: real `tarn node` processes, real HTTP, real
//! SQLite files. One binary, so the slow link happens once.

mod bad_input;
mod cli;
mod closed;
mod cluster;
mod crash;
mod distributed;
mod edgelake;
mod harness;
mod ingest;
mod lan;
mod mesh;
mod mqtt;
mod netns;
mod robust;
mod watch;
