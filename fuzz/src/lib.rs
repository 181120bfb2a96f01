//! Fuzz targets for every reader of outside bytes; see README.md.

pub mod targets;
