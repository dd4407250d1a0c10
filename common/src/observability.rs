//! Logging set-up shared by the three binaries: the same filter rules
//! (`RUST_LOG` wins over the flag; the HTTP stack's chatter held at warn),
//! the same formats.

/// How a binary logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A level (`info`, `debug`, …; kaniko's `fatal`/`panic` mean `error`)
    /// or a full `tracing` filter directive.
    pub level: String,
    pub json: bool,
    /// Colours (kaniko's `--log-format color`).
    pub color: bool,
    pub timestamps: bool,
}

/// Installs the global subscriber; logs go to stderr.
pub fn init(o: &LogOptions) {
    let level = match o.level.as_str() {
        "fatal" | "panic" => "error",
        l => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(format!(
                "{level},h2=warn,hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn"
            ))
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match (o.json, o.color, o.timestamps) {
        (true, _, _) => b.json().init(),
        (false, c, true) => b.with_ansi(c).init(),
        (false, c, false) => b.with_ansi(c).without_time().init(),
    }
}
