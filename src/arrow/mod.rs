//! Arrow in and out (filled in next).
