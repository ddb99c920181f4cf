//! weir-load against a server that cuts and stalls connections (built in step 2).
