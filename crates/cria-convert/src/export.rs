//! (issue 21: in progress)
