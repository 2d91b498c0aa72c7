//! plateflow's coordinator: pipeline files, planning, content-addressed caching, the run
//! journal, scheduling, the gRPC server and the `plateflow` command line.

pub mod spec;
