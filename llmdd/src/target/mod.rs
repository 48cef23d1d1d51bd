//! Finding target processes, their libraries, and the probe points inside them.
