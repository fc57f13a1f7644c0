//! Signals as intents: SIGTERM/SIGINT mean shut down (a second one exits at once), SIGHUP means
//! reload. One signal-hook-tokio stream, owned here.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Shutdown,
    Reload,
}

/// Listen for signals and forward them as [`Control`]s. Runs until the receiver is dropped.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn install() -> std::io::Result<(
    mpsc::Receiver<Control>,
    impl std::future::Future<Output = ()>,
)> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::channel(8);
    let fut = async move {
        let mut shutdowns = 0;
        while let Some(sig) = signals.next().await {
            let control = if sig == SIGHUP {
                Control::Reload
            } else {
                Control::Shutdown
            };
            if control == Control::Shutdown {
                shutdowns += 1;
                if shutdowns > 1 {
                    tracing::warn!("Second stop signal; exiting at once.");
                    std::process::exit(130);
                }
            }
            if tx.send(control).await.is_err() {
                return;
            }
        }
    };
    Ok((rx, fut))
}
