//! Attributes, paths and signatures that jobs are written with.
#![deny(warnings)]

mod jobs {
    use soloist::{JobContext, exclusive_job};

    /// Documented, public, in a module, returning an `io::Result` alias.
    #[exclusive_job(cron = "0 0 3 * * *", name = "nightly-report")]
    pub async fn nightly(_: JobContext) -> std::io::Result<()> {
        Ok(())
    }

    /// A raw identifier as argument, a boxed error as error type.
    #[exclusive_job(key = "kind:{type}")]
    #[allow(clippy::needless_pass_by_value)]
    pub async fn by_kind(
        ctx: soloist::JobContext,
        r#type: String,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let _ = ctx.attempt();
        Ok(r#type)
    }

    // A `cfg` after the attribute removes everything it generates.
    #[exclusive_job(cron = "0 0 3 * * *")]
    #[cfg(any())]
    pub async fn disabled(ctx: JobContext) -> Result<(), NoSuchType> {
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use soloist::{CronJob, KeyedJob};

    let ctx = || soloist::JobContext::builder("test").build();
    jobs::nightly(ctx()).await.unwrap();
    assert_eq!(jobs::nightly.spec().unwrap().name(), "nightly-report");
    assert_eq!(format!("{:?}", jobs::nightly), "nightly");

    assert_eq!(jobs::by_kind(ctx(), "pdf".to_owned()).await.unwrap(), "pdf");
    assert_eq!(jobs::by_kind.key(&"pdf".to_owned()), "kind:pdf");
    let output = jobs::by_kind.call(ctx(), "csv".to_owned()).await.unwrap();
    assert_eq!(output, "csv");
}
