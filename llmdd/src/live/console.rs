//! Messages for the user while tracing: stderr with the plain output, the status bar (and
//! stderr once the live view has closed) with the live view.

#[derive(Default)]
pub struct Console {
    pub live: bool,
    held: Vec<String>,
    pub latest: Option<String>,
}

impl Console {
    pub fn say(&mut self, msg: String) {
        if self.live {
            if self.held.len() < 1000 {
                self.held.push(msg.clone());
            }
            self.latest = Some(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    /// The live view closed: print what it held.
    pub fn flush(&mut self) {
        self.live = false;
        for m in self.held.drain(..) {
            eprintln!("{m}");
        }
    }
}
