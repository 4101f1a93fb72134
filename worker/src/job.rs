//! The two kinds of job, as the runtime sees them.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::JobContext;
use crate::error::{BoxError, Result};
use crate::spec::JobSpec;

/// A job that runs on a cron schedule. `#[exclusive_job(cron = ...)]`
/// implements it; [`cron_job`] builds one at run time.
pub trait CronJob: Send + Sync + 'static {
    /// The job's schedule and settings.
    fn spec(&self) -> Result<JobSpec>;

    /// Runs the job once.
    fn call(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), BoxError>>;
}

/// A job run on request, once at a time per key. `#[exclusive_job(key =
/// ...)]` implements it; [`keyed_job`] builds one at run time.
pub trait KeyedJob: Send + Sync {
    /// The arguments of one run (a tuple for several).
    type Args: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a successful run returns; kept for duplicates when deduped.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The job's key template and settings.
    fn spec(&self) -> Result<JobSpec>;

    /// The key of a run with these arguments, from the template.
    fn key(&self, args: &Self::Args) -> String;

    /// Runs the job once.
    fn call(
        &self,
        ctx: JobContext,
        args: Self::Args,
    ) -> BoxFuture<'static, Result<Self::Output, BoxError>>;
}

/// Anything [`WorkerBuilder::job`](crate::WorkerBuilder::job) registers.
pub trait IntoJob {
    /// The job, ready for the registry.
    fn into_job(self) -> Registration;
}

/// A job ready for a worker's registry.
pub struct Registration {
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Cron(Arc<dyn CronJob>),
    Keyed(Box<Result<JobSpec>>),
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron(job) => f
                .debug_tuple("Cron")
                .field(&job.spec().map(|s| s.name))
                .finish(),
            Kind::Keyed(spec) => f
                .debug_tuple("Keyed")
                .field(&spec.as_ref().as_ref().map(JobSpec::name))
                .finish(),
        }
    }
}

impl Registration {
    /// Registers a cron job.
    pub fn cron(job: impl CronJob) -> Self {
        Registration {
            kind: Kind::Cron(Arc::new(job)),
        }
    }

    /// Registers a keyed job.
    pub fn keyed<J: KeyedJob>(job: &J) -> Self {
        Registration {
            kind: Kind::Keyed(Box::new(job.spec())),
        }
    }
}

/// A cron job built at run time from a spec and an async closure.
///
/// ```
/// use soloist::{JobContext, JobSpec, cron_job};
/// let spec = JobSpec::cron("sweep", "0 * * * * *", "UTC").unwrap();
/// let sweep = cron_job(spec, |ctx: JobContext| async move {
///     println!("sweeping for tick {:?}", ctx.scheduled_at());
///     Ok::<_, std::io::Error>(())
/// });
/// # let _ = sweep;
/// ```
pub fn cron_job<F, Fut, E>(spec: JobSpec, run: F) -> CronFn<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    CronFn { spec, run }
}

/// See [`cron_job`].
pub struct CronFn<F> {
    spec: JobSpec,
    run: F,
}

impl<F> fmt::Debug for CronFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronFn")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<F, Fut, E> CronJob for CronFn<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn spec(&self) -> Result<JobSpec> {
        Ok(self.spec.clone())
    }

    fn call(&self, ctx: JobContext) -> BoxFuture<'static, Result<(), BoxError>> {
        let run = (self.run)(ctx);
        Box::pin(async move { run.await.map_err(Into::into) })
    }
}

impl<F, Fut, E> IntoJob for CronFn<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn into_job(self) -> Registration {
        Registration::cron(self)
    }
}

/// A keyed job built at run time from a spec, a key function and an async
/// closure.
///
/// The key function should render each argument with
/// [`KeyPart`](crate::KeyPart), as the template does, so that different
/// arguments never share a key (a lock and a dedupe record).
///
/// ```
/// use soloist::{JobContext, JobSpec, KeyPart, keyed_job};
/// let spec = JobSpec::keyed("charge", "invoice:{id}").unwrap();
/// let charge = keyed_job(
///     spec,
///     |id: &u64| format!("invoice:{}", KeyPart(id)),
///     |ctx: JobContext, id: u64| async move { Ok::<_, std::io::Error>(id * 100) },
/// );
/// # let _ = charge;
/// ```
pub fn keyed_job<A, T, K, F, Fut, E>(spec: JobSpec, key: K, run: F) -> KeyedFn<A, T, K, F>
where
    K: Fn(&A) -> String,
    F: Fn(JobContext, A) -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    KeyedFn {
        spec,
        key,
        run,
        types: PhantomData,
    }
}

/// See [`keyed_job`].
pub struct KeyedFn<A, T, K, F> {
    spec: JobSpec,
    key: K,
    run: F,
    types: PhantomData<fn(A) -> T>,
}

impl<A, T, K, F> fmt::Debug for KeyedFn<A, T, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedFn")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<A, T, K, F, Fut, E> KeyedJob for KeyedFn<A, T, K, F>
where
    A: Serialize + DeserializeOwned + Send + Sync + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    K: Fn(&A) -> String + Send + Sync + 'static,
    F: Fn(JobContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Args = A;
    type Output = T;

    fn spec(&self) -> Result<JobSpec> {
        Ok(self.spec.clone())
    }

    fn key(&self, args: &A) -> String {
        (self.key)(args)
    }

    fn call(&self, ctx: JobContext, args: A) -> BoxFuture<'static, Result<T, BoxError>> {
        let run = (self.run)(ctx, args);
        Box::pin(async move { run.await.map_err(Into::into) })
    }
}

impl<A, T, K, F> IntoJob for KeyedFn<A, T, K, F>
where
    Self: KeyedJob,
{
    fn into_job(self) -> Registration {
        Registration::keyed(&self)
    }
}

impl<J: KeyedJob> KeyedJob for &J {
    type Args = J::Args;
    type Output = J::Output;

    fn spec(&self) -> Result<JobSpec> {
        (**self).spec()
    }

    fn key(&self, args: &J::Args) -> String {
        (**self).key(args)
    }

    fn call(
        &self,
        ctx: JobContext,
        args: J::Args,
    ) -> BoxFuture<'static, Result<J::Output, BoxError>> {
        (**self).call(ctx, args)
    }
}
