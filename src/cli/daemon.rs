//! `support daemon`

use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use crate::Error;
use crate::daemon::{self, Options};

/// Run the daemon in the foreground (systemd `Type=notify` ready).
///
/// It enforces the owner's grant on every task, serves the loopback
/// control API for `support status`, `tasks`, `stop` and `watch`, and
/// stops on SIGTERM or SIGINT after stopping every running task.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control API's port on 127.0.0.1 (0: any free port, written to daemon.json).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    control_port: u16,
    /// The most tasks running at once; more are denied BUSY.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_tasks: u16,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    // One thread runs everything; audit appends go to a blocking thread
    // that ends one second after its last use, so an idle daemon keeps
    // just this thread and the inotify watcher's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(Duration::from_secs(1))
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
            .await
            .map_err(|e| Error::Failed(format!("cannot listen on 127.0.0.1:{}: {e}", args.control_port)))?;
        let options = Options { max_tasks: args.max_tasks.into() };
        daemon::run(&ctx.paths, options, listener, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
