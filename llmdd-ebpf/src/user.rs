//! User-defined probes (`--probe`): any function of any library, named on the command line.
//! The same generic call path; the cookie carries a user function id (`funcs::USER_BASE` on).
crate::calls::call_probe_pair!(user_entry, user_return);
