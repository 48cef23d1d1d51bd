//! The real terminal: raw mode and the alternate screen while the view is up, restored on
//! every way out (drop, panic hook; SIGTERM and Ctrl-C end the run loop, which drops it).

use std::{
    io::{Stdout, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event as TermEvent},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};

use super::{render, Action, Model, Ui};

/// Set while the terminal is in raw mode / on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Shortest time between two draws.
const MIN_REDRAW: Duration = Duration::from_millis(50);

/// Puts the terminal back (idempotent; safe from a panic hook).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut out = std::io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
}

/// The live view on the process's terminal.
pub struct Live {
    term: Terminal<CrosstermBackend<Stdout>>,
    pub ui: Ui,
    model: Model,
    dirty: bool,
    last_draw: Option<Instant>,
}

impl Live {
    /// Enters the alternate screen. The panic hook restores the terminal before the
    /// panic message is printed.
    pub fn start() -> Result<Live> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                prev(info);
            }));
        });
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = std::io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e).context("entering the alternate screen");
        }
        let term = match Terminal::new(CrosstermBackend::new(std::io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("starting the terminal view");
            }
        };
        Ok(Live {
            term,
            ui: Ui::default(),
            model: Model::default(),
            dirty: true,
            last_draw: None,
        })
    }

    /// Whether the display is paused (the model is then not replaced).
    pub fn paused(&self) -> bool {
        self.ui.paused
    }

    /// Takes a new model (ignored while paused, except for the status bar).
    pub fn set_model(&mut self, m: Model) {
        if self.ui.paused {
            self.model.status = m.status;
        } else {
            self.model = m;
        }
        self.dirty = true;
    }

    /// The current model (for rates between two models).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Reads every waiting key without blocking; `Quit` when asked to.
    pub fn input(&mut self) -> Result<Action> {
        while event::poll(Duration::ZERO).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                TermEvent::Key(k) => {
                    let rows = render::row_counts(&self.model, &self.ui);
                    match self.ui.key(k, rows) {
                        Action::Quit => return Ok(Action::Quit),
                        Action::Redraw => self.dirty = true,
                        Action::None => {}
                    }
                }
                TermEvent::Resize(..) => self.dirty = true,
                _ => {}
            }
        }
        Ok(Action::None)
    }

    /// Redraws when something changed, at most every 50 ms.
    pub fn draw(&mut self) -> Result<()> {
        if !self.dirty || self.last_draw.is_some_and(|t| t.elapsed() < MIN_REDRAW) {
            return Ok(());
        }
        let (m, ui) = (&self.model, &self.ui);
        self.term
            .draw(|f| render::draw(f, m, ui))
            .context("drawing the terminal view")?;
        self.dirty = false;
        self.last_draw = Some(Instant::now());
        Ok(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        restore();
    }
}
