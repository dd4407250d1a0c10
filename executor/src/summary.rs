//! What a build says about itself where people look: one line for a CI
//! log reader, and `--summary-file` for the CI's run page (Markdown for
//! GitHub's step summary or GitLab's, JUnit XML for Jenkins and GitLab test
//! reports). Pure rendering of a [`BuildResult`], unit-tested.

use crate::outcome::BuildResult;

/// How a step is named in metrics and summaries: `line 9 COPY package.json`,
/// shortened so that one Dockerfile line cannot make a huge label.
pub fn step_name(line: usize, instruction: &str) -> String {
    format!("line {line} {}", shorten(instruction, 60))
}

/// The one line: `12/14 steps from cache, 41.0 s saved, first miss: line 9
/// `COPY package.json` — <why>`; `cache off` when the build used none.
pub fn one_line(r: &BuildResult) -> String {
    let looked_up = r.cache_hits + r.cache_misses + r.cache_errors;
    if looked_up == 0 {
        return format!("{} steps, cache off, {:.1} s", r.steps.len(), r.seconds);
    }
    let mut s = format!("{}/{} steps from cache", r.cache_hits, looked_up);
    // Hits a `--cache-from` repository had, by repository.
    let mut from: std::collections::BTreeMap<&str, usize> = Default::default();
    for st in &r.steps {
        if let Some(f) = &st.cache_from {
            *from.entry(f.as_str()).or_default() += 1;
        }
    }
    if !from.is_empty() {
        let parts: Vec<String> = from.iter().map(|(f, n)| format!("{n} from {f}")).collect();
        s.push_str(&format!(" ({})", parts.join(", ")));
    }
    s.push_str(&format!(", {:.1} s saved", r.seconds_saved));
    if r.cache_errors > 0 {
        s.push_str(&format!(", {} cache errors", r.cache_errors));
    }
    match &r.first_miss {
        Some(m) => s.push_str(&format!(
            ", first miss: line {} `{}` — {}",
            m.line,
            shorten(&m.instruction, 60),
            m.why
        )),
        None if r.cache_misses == 0 => s.push_str(", no misses"),
        None => {}
    }
    s
}

/// A Markdown section: the one line, then a table of the steps.
pub fn markdown(r: &BuildResult) -> String {
    let mut s = format!(
        "### Kiln build `{}`\n\n{}\n\n| stage | line | step | cache | seconds | layer bytes |\n|---|---:|---|---|---:|---:|\n",
        shorten(r.manifest_digest.as_str(), 19),
        one_line(r)
    );
    for st in &r.steps {
        s.push_str(&format!(
            "| {} | {} | `{}` | {} | {:.2} | {} |\n",
            md_cell(&st.stage),
            st.line,
            md_cell(&shorten(&st.instruction, 80)).replace('`', "'"),
            match (&st.cache, &st.cache_from) {
                (Some(c), Some(f)) => format!("{c} from {}", md_cell(f)),
                (Some(c), None) => c.clone(),
                (None, _) => "-".into(),
            },
            st.seconds,
            st.layer_size
        ));
    }
    for p in &r.pushed {
        s.push_str(&format!("\npushed `{}`\n", md_cell(p)));
    }
    s
}

/// A JUnit XML report: one test case per step (time = the step's), the
/// cache result as a property, the one line as the suite's system-out.
pub fn junit(r: &BuildResult) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"kiln build\" tests=\"{}\" failures=\"0\" errors=\"0\" time=\"{:.3}\">\n",
        r.steps.len(),
        r.seconds
    );
    for st in &r.steps {
        s.push_str(&format!(
            "    <testcase classname=\"kiln.{}\" name=\"{}\" time=\"{:.3}\">\n      <properties><property name=\"cache\" value=\"{}\"/></properties>\n    </testcase>\n",
            xml(&st.stage),
            xml(&step_name(st.line, &st.instruction)),
            st.seconds,
            xml(st.cache.as_deref().unwrap_or("off"))
        ));
    }
    s.push_str(&format!(
        "    <system-out>{}</system-out>\n  </testsuite>\n</testsuites>\n",
        xml(&one_line(r))
    ));
    s
}

/// The format of a `--summary-file`, chosen by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryFormat {
    /// Appended: GitHub's `$GITHUB_STEP_SUMMARY` collects several steps'
    /// sections.
    Markdown,
    /// For a name ending in `.xml`; replaces the file.
    Junit,
}

impl SummaryFormat {
    pub fn for_path(path: &std::path::Path) -> SummaryFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => SummaryFormat::Junit,
            _ => SummaryFormat::Markdown,
        }
    }

    pub fn render(self, r: &BuildResult) -> String {
        match self {
            SummaryFormat::Junit => junit(r),
            SummaryFormat::Markdown => markdown(r),
        }
    }

    /// Whether the file is appended to rather than replaced.
    pub fn appends(self) -> bool {
        self == SummaryFormat::Markdown
    }
}

fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            c if c.is_control() => " ".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{FirstMiss, StepReport};
    use kiln_common::Digest;

    fn result(hits: u64, misses: u64, first: Option<FirstMiss>) -> BuildResult {
        let mut step = StepReport::new("0", 9, "COPY package.json ./ # <x> & \"y\"".into(), 1.5);
        step.cache = Some("miss".into());
        BuildResult {
            manifest_digest: Digest::sha256_of(b"m"),
            manifest_size: 500,
            platform: kiln_common::image::Platform::host(),
            config_digest: Digest::sha256_of(b"c"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            pushed: vec!["reg/app:1".into()],
            steps: vec![step],
            seconds: 3.0,
            cache_hits: hits,
            cache_misses: misses,
            cache_errors: 0,
            bytes_pulled: 0,
            bytes_pushed_cache: 0,
            cache_mounts: Vec::new(),
            seconds_saved: 41.04,
            bytes_saved: 0,
            first_miss: first,
        }
    }

    fn miss() -> FirstMiss {
        FirstMiss {
            stage: "0".into(),
            line: 9,
            instruction: "COPY package.json ./".into(),
            why: "file package.json: content changed".into(),
        }
    }

    #[test]
    fn the_line_counts_hits_and_names_the_first_miss() {
        assert_eq!(
            one_line(&result(12, 2, Some(miss()))),
            "12/14 steps from cache, 41.0 s saved, first miss: line 9 `COPY package.json ./` — file package.json: content changed"
        );
        assert_eq!(
            one_line(&result(3, 0, None)),
            "3/3 steps from cache, 41.0 s saved, no misses"
        );
        assert!(one_line(&result(0, 0, None)).contains("cache off"));
    }

    #[test]
    fn hits_from_fallbacks_are_counted_by_repository() {
        let mut r = result(3, 0, None);
        let mut hit = |from: Option<&str>| {
            let mut st = StepReport::new("0", 2, "RUN make".into(), 0.0);
            st.cache = Some("hit".into());
            st.cache_from = from.map(str::to_string);
            r.steps.push(st);
        };
        hit(Some("cache:5000/app/main"));
        hit(Some("cache:5000/app/main"));
        hit(None);
        assert_eq!(
            one_line(&r),
            "3/3 steps from cache (2 from cache:5000/app/main), 41.0 s saved, no misses"
        );
        assert!(markdown(&r).contains("| hit from cache:5000/app/main |"));
    }

    #[test]
    fn markdown_and_junit_escape_what_the_dockerfile_says() {
        let r = result(0, 1, Some(miss()));
        let md = markdown(&r);
        assert!(md.contains("| 0 | 9 | `COPY package.json ./ # <x> & \"y\"` | miss | 1.50 |"));
        let x = junit(&r);
        assert!(x.contains("name=\"line 9 COPY package.json ./ # &lt;x&gt; &amp; &quot;y&quot;\""));
        assert!(x.contains("<property name=\"cache\" value=\"miss\"/>"));
        assert_eq!(x.matches("<testcase ").count(), 1);
        let xml = SummaryFormat::for_path(std::path::Path::new("a/junit.xml"));
        assert!(xml.render(&r).starts_with("<?xml") && !xml.appends());
        let md = SummaryFormat::for_path(std::path::Path::new("summary.md"));
        assert!(md.render(&r).starts_with("### Kiln") && md.appends());
    }

    #[test]
    fn long_steps_are_shortened_to_one_line() {
        let n = step_name(3, &format!("RUN {}\necho", "x".repeat(200)));
        assert!(n.chars().count() <= 68, "{n}");
        assert!(!n.contains('\n'));
    }
}
