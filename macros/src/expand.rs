//! Checks `#[exclusive_job]` against the function it marks, and emits the
//! job: the function under a hidden name, a zero-sized value under the
//! function's name that still calls it, and that value's `CronJob` or
//! `KeyedJob` and `IntoJob` impls.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, Ident, Item, ItemFn, LitStr, Pat, PatType, PathArguments, ReturnType,
    Type,
};

use crate::attr::{Args, Errors, Missed, OnLost, OverRate, Setting};

/// Expands `#[exclusive_job(args)] item`.
pub(crate) fn exclusive_job(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        Ok(other) => {
            let error = syn::Error::new_spanned(
                other,
                "`#[exclusive_job]` goes on an `async fn`: the job's body",
            );
            return token_stream_with_error(item, error);
        }
        Err(error) => return token_stream_with_error(item, error),
    };
    let signature = Signature::check(&func);
    let settings = syn::parse2::<Args>(args).and_then(|args| Settings::check(args, &func));
    match (signature, settings) {
        (Ok(signature), Ok(settings)) => emit(&func, &signature, &settings),
        (Err(mut error), Err(more)) => {
            error.combine(more);
            token_stream_with_error(item, error)
        }
        (Err(error), _) | (_, Err(error)) => token_stream_with_error(item, error),
    }
}

/// The item as written, followed by the errors.
fn token_stream_with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    // Emitting the function unchanged keeps the rest of the crate checking
    // against it: without it every use of the job would add an error of its
    // own, and an IDE would lose the function whenever the attribute is
    // half-typed.
    item.extend(error.into_compile_error());
    item
}

/// What the function's signature contributes to the job.
struct Signature<'a> {
    /// The type of the first parameter, the `JobContext`.
    ctx: &'a Type,
    /// The parameters after it: a keyed job's arguments.
    args: Vec<&'a PatType>,
    /// The return type, `Result<T, E>`.
    output: &'a Type,
    /// Its `T`.
    ok: &'a Type,
    /// Its `E`, unless an alias such as `io::Result<T>` hides it.
    err: Option<&'a Type>,
}

impl<'a> Signature<'a> {
    fn check(func: &'a ItemFn) -> syn::Result<Self> {
        let sig = &func.sig;
        let mut errors = Errors::default();
        if sig.asyncness.is_none() {
            errors.push(syn::Error::new(
                sig.fn_token.span,
                "a job must be an `async fn`",
            ));
        }
        if let Some(unsafety) = sig.unsafety {
            errors.push(syn::Error::new(
                unsafety.span,
                "a job cannot be `unsafe`: the runtime calls it with no contract to uphold",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new_spanned(
                abi,
                "a job cannot have an `extern` ABI",
            ));
        }
        let generic = "a job cannot be generic: the runtime needs one concrete function to call";
        if !sig.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(&sig.generics, generic));
        } else if let Some(where_clause) = &sig.generics.where_clause {
            errors.push(syn::Error::new_spanned(where_clause, generic));
        }
        let mut ctx = None;
        let mut args = Vec::new();
        for (index, input) in sig.inputs.iter().enumerate() {
            match input {
                FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                    receiver,
                    "a job is a free function: it cannot take `self`",
                )),
                FnArg::Typed(arg) if index == 0 => {
                    if is_job_context(&arg.ty) {
                        ctx = Some(&*arg.ty);
                    } else {
                        errors.push(syn::Error::new_spanned(
                            &arg.ty,
                            "the first parameter of a job must be its `JobContext`, \
                             e.g. `ctx: JobContext`",
                        ));
                    }
                }
                FnArg::Typed(arg) => {
                    if let Type::ImplTrait(ty) = &*arg.ty {
                        errors.push(syn::Error::new_spanned(
                            ty,
                            "a job cannot be generic: name a concrete argument type",
                        ));
                    }
                    args.push(arg);
                }
            }
        }
        if sig.inputs.is_empty() {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a job takes its `JobContext` as the first parameter, e.g. `ctx: JobContext`",
            ));
        }
        let output = match &sig.output {
            ReturnType::Type(_, ty) => match result_parts(ty) {
                Some((ok, err)) => Some((&**ty, ok, err)),
                None => {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "a job returns `Result<T, E>`, with an error type `E` that converts \
                         into `soloist::BoxError`",
                    ));
                    None
                }
            },
            ReturnType::Default => {
                errors.push(syn::Error::new(
                    sig.paren_token.span.close(),
                    "a job returns `Result<T, E>`: add `-> Result<(), YourError>`",
                ));
                None
            }
        };
        errors.finish()?;
        match (ctx, output) {
            (Some(ctx), Some((output, ok, err))) => Ok(Signature {
                ctx,
                args,
                output,
                ok,
                err,
            }),
            // Each `None` above comes with an error, so `finish` returned.
            _ => Err(syn::Error::new(
                sig.ident.span(),
                "`#[exclusive_job]` could not read this signature",
            )),
        }
    }
}

/// Whether `ty` names `JobContext` (however imported).
fn is_job_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "JobContext" && last.arguments.is_none()),
        Type::Group(group) => is_job_context(&group.elem),
        _ => false,
    }
}

/// The `T` and `E` of `Result<T, E>`, or the `T` of a one-parameter alias
/// such as `io::Result<T>`.
fn result_parts(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let PathArguments::AngleBracketed(generics) = &last.arguments else {
                return None;
            };
            let mut types = generics.args.iter().filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            });
            let ok = types.next()?;
            let err = types.next();
            (last.ident == "Result" && types.next().is_none()).then_some((ok, err))
        }
        Type::Group(group) => result_parts(&group.elem),
        _ => None,
    }
}

/// What the attribute contributes to the job.
struct Settings {
    /// The job's name.
    name: String,
    trigger: Trigger,
    /// `JobSpec` setter calls, e.g. `.ttl(...)`.
    setters: Vec<TokenStream>,
}

enum Trigger {
    Cron {
        expression: LitStr,
        tz: String,
    },
    Keyed {
        template: LitStr,
        /// The template as a `format!` string, each placeholder a `{}`.
        format: LitStr,
        /// For each placeholder, in order, the index of its argument.
        uses: Vec<usize>,
    },
}

impl Settings {
    fn check(args: Args, func: &ItemFn) -> syn::Result<Self> {
        let Args {
            cron,
            tz,
            key,
            ttl,
            misfire,
            retries,
            backoff,
            max_hold,
            dedupe,
            wait,
            on_lost,
            missed,
            name,
            concurrency,
            rate,
            over_rate,
        } = args;
        let mut errors = Errors::default();
        let cron_only = [place(&tz), place(&misfire), place(&missed)];
        let keyed_only = [
            place(&dedupe),
            place(&wait),
            place(&rate),
            place(&over_rate),
        ];
        let trigger = match (cron, key) {
            (Some(cron), None) => {
                for (name, key) in keyed_only.into_iter().flatten() {
                    errors.push(syn::Error::new(
                        key,
                        format!(
                            "`{name}` applies only to keyed jobs (`key = ...`); \
                             this is a cron job, whose ticks run once each anyway"
                        ),
                    ));
                }
                check_cron(&cron.value, tz.as_ref(), func, &mut errors)
            }
            (None, Some(key)) => {
                for (name, key) in cron_only.into_iter().flatten() {
                    errors.push(syn::Error::new(
                        key,
                        format!(
                            "`{name}` applies only to cron jobs (`cron = ...`); \
                             this is a keyed job, run on request"
                        ),
                    ));
                }
                check_key(&key.value, func, &mut errors)
            }
            (Some(_), Some(key)) => {
                errors.push(syn::Error::new(
                    key.key,
                    "a job has either `cron = ...` (it runs on a schedule) or \
                     `key = ...` (it runs on request), not both",
                ));
                None
            }
            (None, None) => {
                errors.push(syn::Error::new(
                    Span::call_site(),
                    "`#[exclusive_job]` needs `cron = \"...\"` for a job that runs on a \
                     schedule, or `key = \"...\"` for one that runs on request",
                ));
                None
            }
        };

        if let Some(ttl) = &ttl {
            let (min, max) = (soloist_parse::MIN_TTL, soloist_parse::MAX_TTL);
            if !(min..=max).contains(&ttl.value) {
                errors.push(syn::Error::new(
                    ttl.span,
                    format!(
                        "`ttl` must be between {min:?} and {}h",
                        max.as_secs() / 3600
                    ),
                ));
            }
        }
        for setting in [&misfire, &max_hold, &dedupe].into_iter().flatten() {
            if setting.value.is_zero() {
                errors.push(syn::Error::new(
                    setting.span,
                    format!("`{}` must not be zero", setting.name),
                ));
            }
        }
        // The worker's bounds, checked here so that what compiles registers.
        for setting in [&misfire, &max_hold, &dedupe, &backoff, &wait]
            .into_iter()
            .flatten()
        {
            if setting.value > soloist_parse::MAX_SETTING {
                errors.push(syn::Error::new(
                    setting.span,
                    format!("`{}` must be at most a year", setting.name),
                ));
            }
        }
        if let Some(retries) = retries
            .as_ref()
            .filter(|r| r.value > soloist_parse::MAX_RETRIES)
        {
            errors.push(syn::Error::new(
                retries.span,
                format!("`retries` must be at most {}", soloist_parse::MAX_RETRIES),
            ));
        }

        if let Some(concurrency) = &concurrency {
            let max = soloist_parse::MAX_PERMITS;
            if !(1..=max).contains(&concurrency.value) {
                errors.push(syn::Error::new(
                    concurrency.span,
                    format!("`concurrency` must be between 1 and {max}"),
                ));
            }
        }

        let mut setters = Vec::new();
        if let Some(rate) = &rate {
            let (count, period) = rate.value;
            let (secs, nanos) = (period.as_secs(), period.subsec_nanos());
            setters.push(quote!(.rate(#count, ::soloist::__private::Duration::new(#secs, #nanos))));
        }
        if let Some(over_rate) = &over_rate {
            let variant = match over_rate.value {
                OverRate::Wait => quote!(Wait),
                OverRate::Reschedule => quote!(Reschedule),
            };
            setters.push(quote!(.over_rate(::soloist::OverRate::#variant)));
        }
        if let Some(concurrency) = &concurrency {
            let permits = concurrency.value;
            setters.push(quote!(.concurrency(#permits)));
        }
        for setting in [&ttl, &misfire].into_iter().flatten() {
            setters.push(duration_setter(setting));
        }
        if let Some(retries) = &retries {
            let retries = retries.value;
            setters.push(quote!(.retries(#retries)));
        }
        for setting in [&backoff, &max_hold, &dedupe, &wait].into_iter().flatten() {
            setters.push(duration_setter(setting));
        }
        if let Some(on_lost) = &on_lost {
            let variant = match on_lost.value {
                OnLost::Cancel => quote!(Cancel),
                OnLost::Signal => quote!(Signal),
            };
            setters.push(quote!(.on_lost(::soloist::__private::OnLost::#variant)));
        }
        if let Some(missed) = &missed {
            let variant = match missed.value {
                Missed::Skip => quote!(Skip),
                Missed::Once => quote!(RunOnce),
                Missed::CatchUp(count) => quote!(CatchUp(#count)),
            };
            setters.push(quote!(.missed(::soloist::__private::MissedTicks::#variant)));
        }

        errors.finish()?;
        let name = name.map_or_else(|| func.sig.ident.unraw().to_string(), |name| name.value);
        match trigger {
            Some(trigger) => Ok(Settings {
                name,
                trigger,
                setters,
            }),
            // Each `None` above comes with an error, so `finish` returned.
            None => Err(syn::Error::new(
                Span::call_site(),
                "`#[exclusive_job]` could not read these settings",
            )),
        }
    }
}

/// The name of a setting and where it is written, if it is.
fn place<T>(setting: &Option<Setting<T>>) -> Option<(&'static str, Span)> {
    setting.as_ref().map(|setting| (setting.name, setting.key))
}

fn duration_setter(setting: &Setting<Duration>) -> TokenStream {
    let method = Ident::new(setting.name, setting.key);
    let secs = setting.value.as_secs();
    let nanos = setting.value.subsec_nanos();
    quote!(.#method(::soloist::__private::Duration::new(#secs, #nanos)))
}

/// Checks a cron job's schedule with the runtime's own parser, and that
/// the function takes and returns nothing a tick could not give or keep.
fn check_cron(
    expression: &LitStr,
    tz: Option<&Setting<LitStr>>,
    func: &ItemFn,
    errors: &mut Errors,
) -> Option<Trigger> {
    if let Some(extra) = func.sig.inputs.iter().nth(1) {
        errors.push(syn::Error::new_spanned(
            extra,
            "a cron job takes only its `JobContext`: a tick has no arguments to give; \
             for a job run on request with arguments, use `key = \"...\"`",
        ));
    }
    if let ReturnType::Type(_, ty) = &func.sig.output
        && let Some((ok, _)) = result_parts(ty)
        && !matches!(ok, Type::Tuple(unit) if unit.elems.is_empty())
    {
        errors.push(syn::Error::new_spanned(
            ok,
            "a cron job returns `Result<(), E>`: no caller receives what a tick returns",
        ));
    }
    // The expression and the zone are checked apart, against a known-good
    // partner, so that each error points at its own literal and a bad pair
    // reports both.
    if let Err(error) = soloist_parse::CronSchedule::new(&expression.value(), "UTC") {
        errors.push(syn::Error::new(expression.span(), error));
    }
    let tz_name = tz.map_or_else(|| "UTC".to_owned(), |tz| tz.value.value());
    if let Err(error) = soloist_parse::CronSchedule::new("0 * * * * *", &tz_name) {
        let span = tz.map_or_else(Span::call_site, |tz| tz.span);
        errors.push(syn::Error::new(span, error));
    }
    Some(Trigger::Cron {
        expression: expression.clone(),
        tz: tz_name,
    })
}

/// Checks a keyed job's key template with the runtime's own parser, and
/// each of its placeholders against the function's arguments.
fn check_key(template: &LitStr, func: &ItemFn, errors: &mut Errors) -> Option<Trigger> {
    let sig = &func.sig;
    let name_of = |input: &FnArg| match input {
        FnArg::Typed(PatType { pat, .. }) => match &**pat {
            Pat::Ident(pat) => Some(pat.ident.unraw().to_string()),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    };
    // Without a context first, `Signature::check` complains; the
    // parameters are then all taken for arguments, for the checks below.
    let has_ctx = matches!(sig.inputs.first(), Some(FnArg::Typed(arg)) if is_job_context(&arg.ty));
    let ctx_name = sig.inputs.first().filter(|_| has_ctx).and_then(name_of);
    let arg_names: Vec<Option<String>> = sig
        .inputs
        .iter()
        .skip(usize::from(has_ctx))
        .map(name_of)
        .collect();
    if arg_names.is_empty() && has_ctx {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!(
                "a keyed job takes the data of a run as arguments after its `JobContext`, \
                 and renders its key from them; `{}` has none",
                sig.ident.unraw()
            ),
        ));
    }
    let parsed = match soloist_parse::KeyTemplate::parse(&template.value()) {
        Ok(parsed) => parsed,
        Err(reason) => {
            errors.push(syn::Error::new(
                template.span(),
                format!("invalid key template: {reason}"),
            ));
            return None;
        }
    };
    let mut uses = Vec::new();
    // With no arguments at all, that alone is the error to show.
    let placeholders = if arg_names.is_empty() {
        &[][..]
    } else {
        parsed.placeholders()
    };
    for placeholder in placeholders {
        let position = arg_names
            .iter()
            .position(|name| name.as_deref() == Some(placeholder.as_str()));
        match position {
            Some(index) => uses.push(index),
            None if ctx_name.as_deref() == Some(placeholder.as_str()) => {
                errors.push(syn::Error::new(
                    template.span(),
                    format!(
                        "`{{{placeholder}}}` in the key names the `JobContext`, which is \
                         not part of a run's data; name one of the job's arguments"
                    ),
                ));
            }
            None => {
                let known: Vec<String> = arg_names
                    .iter()
                    .flatten()
                    .map(|name| format!("`{name}`"))
                    .collect();
                errors.push(syn::Error::new(
                    template.span(),
                    format!(
                        "`{{{placeholder}}}` in the key names no argument of `{}` \
                         (its arguments: {})",
                        sig.ident.unraw(),
                        if known.is_empty() {
                            "none with a plain name".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
    }
    Some(Trigger::Keyed {
        template: template.clone(),
        format: LitStr::new(&format_string(parsed.as_str()), template.span()),
        uses,
    })
}

/// A valid key template as a `format!` string: `{name}` becomes `{}`; the
/// escapes `{{` and `}}` mean the same in both.
fn format_string(template: &str) -> String {
    let mut format = String::with_capacity(template.len());
    let mut in_placeholder = false;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if in_placeholder => in_placeholder = c != '}',
            '{' | '}' if chars.peek() == Some(&c) => {
                chars.next();
                format.push(c);
                format.push(c);
            }
            '{' => {
                in_placeholder = true;
                format.push_str("{}");
            }
            _ => format.push(c),
        }
    }
    format
}

/// The span of `span`'s place in the source, resolving names as the
/// macro's own tokens do: errors point at the user's code while the names
/// the macro introduces stay its own.
fn at(span: Span) -> Span {
    Span::call_site().located_at(span)
}

fn emit(func: &ItemFn, sig: &Signature<'_>, settings: &Settings) -> TokenStream {
    let ident = &func.sig.ident;
    let bare = ident.unraw();
    let emit = Emit {
        func,
        sig,
        settings,
        inner: format_ident!("__soloist_job_{}", bare, span = ident.span()),
        marker: format_ident!("__soloist_{}", bare, span = ident.span()),
    };
    emit.items()
}

/// The pieces of one expansion.
struct Emit<'a> {
    func: &'a ItemFn,
    sig: &'a Signature<'a>,
    settings: &'a Settings,
    /// The function's hidden name.
    inner: Ident,
    /// The type of the value under the function's name.
    marker: Ident,
}

impl Emit<'_> {
    fn items(&self) -> TokenStream {
        let Emit {
            func,
            inner,
            marker,
            ..
        } = self;
        let vis = &func.vis;
        let ident = &func.sig.ident;
        let debug_name = ident.unraw().to_string();
        let cfgs: Vec<_> = func
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("cfg"))
            .collect();
        let docs: Vec<_> = func
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("doc"))
            .collect();
        let mut inner_fn = ItemFn::clone(func);
        inner_fn.sig.ident = inner.clone();
        inner_fn.attrs.retain(|attr| !attr.path().is_ident("doc"));

        let ctx_ty = self.sig.ctx;
        let arg_tys = self.sig.args.iter().map(|arg| &arg.ty);
        let output = self.sig.output;
        let fn_ptr = quote! {
            fn(#ctx_ty #(, #arg_tys)*) -> ::soloist::__private::BoxFuture<'static, #output>
        };
        let arg_names: Vec<Ident> = (0..self.sig.args.len())
            .map(|index| format_ident!("__soloist_arg{}", index))
            .collect();
        let job_impls = match &self.settings.trigger {
            Trigger::Cron { expression, tz } => self.cron(expression, tz),
            Trigger::Keyed {
                template,
                format,
                uses,
            } => self.keyed(template, format, uses),
        };

        quote! {
            // The attribute requires `async` whether or not the body awaits.
            #[allow(clippy::unused_async)]
            #[doc(hidden)]
            #inner_fn

            #(#cfgs)*
            #[allow(non_camel_case_types)]
            #[doc(hidden)]
            #[derive(::core::clone::Clone, ::core::marker::Copy)]
            #vis struct #marker;

            #(#cfgs)*
            #(#docs)*
            #[allow(non_upper_case_globals)]
            #vis const #ident: #marker = #marker;

            #(#cfgs)*
            const _: () = {
                impl ::core::fmt::Debug for #marker {
                    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.write_str(#debug_name)
                    }
                }

                // A call of the value derefs to a plain function pointer
                // (a promoted constant), so the job stays callable as written.
                impl ::core::ops::Deref for #marker {
                    type Target = #fn_ptr;

                    fn deref(&self) -> &Self::Target {
                        const CALL: #fn_ptr = |__soloist_ctx #(, #arg_names)*| {
                            ::std::boxed::Box::pin(#inner(__soloist_ctx #(, #arg_names)*))
                        };
                        &CALL
                    }
                }

                #job_impls
            };
        }
    }

    /// `call(...).await`, its error boxed.
    fn run(&self, call: TokenStream) -> TokenStream {
        // This is where an error type that is no `BoxError` fails to
        // convert: spanned so, that error points at the error type.
        let span = self
            .sig
            .err
            .map_or_else(|| self.sig.output.span(), Spanned::span);
        quote_spanned! {at(span)=>
            ::core::result::Result::map_err(#call.await, ::core::convert::Into::into)
        }
    }

    fn cron(&self, expression: &LitStr, tz: &str) -> TokenStream {
        let Emit { inner, marker, .. } = self;
        let name = &self.settings.name;
        let setters = &self.settings.setters;
        let run = self.run(quote!(#inner(ctx)));
        quote! {
            impl ::soloist::__private::CronJob for #marker {
                fn spec(
                    &self,
                ) -> ::soloist::__private::Result<::soloist::__private::JobSpec> {
                    let spec = ::soloist::__private::JobSpec::cron(#name, #expression, #tz)?;
                    ::core::result::Result::Ok(spec #(#setters)*)
                }

                fn call(
                    &self,
                    ctx: ::soloist::__private::JobContext,
                ) -> ::soloist::__private::BoxFuture<
                    'static,
                    ::core::result::Result<(), ::soloist::__private::BoxError>,
                > {
                    ::std::boxed::Box::pin(async move { #run })
                }
            }

            impl ::soloist::__private::IntoJob for #marker {
                fn into_job(self) -> ::soloist::__private::Registration {
                    ::soloist::__private::Registration::cron(self)
                }
            }
        }
    }

    fn keyed(&self, template: &LitStr, format: &LitStr, uses: &[usize]) -> TokenStream {
        let Emit { inner, marker, .. } = self;
        let name = &self.settings.name;
        let setters = &self.settings.setters;
        let args = &self.sig.args;
        let ok = self.sig.ok;
        let single = args.len() == 1;
        let arg_tys: Vec<&Type> = args.iter().map(|arg| &*arg.ty).collect();

        // Arguments and output travel as JSON between replicas. A type that
        // cannot fails the bounds of `Args` or `Output`: spanned so, that
        // error points at the output type or the parameter list. Several
        // arguments make a tuple, so each is also checked on its own, for an
        // error pointing at the very type.
        let params = at(self.func.sig.paren_token.span.join());
        let args_item = if single {
            quote_spanned!(params=> type Args = #(#arg_tys)*;)
        } else {
            quote_spanned!(params=> type Args = (#(#arg_tys,)*);)
        };
        let output_item = quote_spanned!(at(ok.span())=> type Output = #ok;);
        let data_types = (!single).then(|| {
            let each = arg_tys.iter().map(|ty| {
                quote_spanned! {at(ty.span())=>
                    const _: fn() = __soloist_assert_data::<#ty>;
                }
            });
            quote! {
                fn __soloist_assert_data<
                    T: ::soloist::__private::Serialize + ::soloist::__private::DeserializeOwned,
                >() {
                }
                #(#each)*
            }
        });

        let key_args = uses.iter().map(|&index| {
            // Spanned on the parameter, where a type without `Display` is
            // reported.
            let span = at(args[index].pat.span());
            let arg = if single {
                quote_spanned!(span=> args)
            } else {
                let field = syn::Index::from(index);
                quote_spanned!(span=> &args.#field)
            };
            // Escaped, so that different arguments never render one key.
            quote_spanned!(span=> ::soloist::__private::KeyPart(#arg))
        });
        let call_args = if single {
            quote!(args)
        } else {
            let fields = (0..args.len()).map(syn::Index::from);
            quote!(#(args.#fields),*)
        };
        let run = self.run(quote!(#inner(ctx, #call_args)));

        quote! {
            #data_types

            impl ::soloist::__private::KeyedJob for #marker {
                #args_item
                #output_item

                fn spec(
                    &self,
                ) -> ::soloist::__private::Result<::soloist::__private::JobSpec> {
                    let spec = ::soloist::__private::JobSpec::keyed(#name, #template)?;
                    ::core::result::Result::Ok(spec #(#setters)*)
                }

                fn key(&self, args: &Self::Args) -> ::std::string::String {
                    ::std::format!(#format #(, #key_args)*)
                }

                fn call(
                    &self,
                    ctx: ::soloist::__private::JobContext,
                    args: Self::Args,
                ) -> ::soloist::__private::BoxFuture<
                    'static,
                    ::core::result::Result<Self::Output, ::soloist::__private::BoxError>,
                > {
                    ::std::boxed::Box::pin(async move { #run })
                }
            }

            impl ::soloist::__private::IntoJob for #marker {
                fn into_job(self) -> ::soloist::__private::Registration {
                    ::soloist::__private::Registration::keyed(&self)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::format_string;

    #[test]
    fn key_templates_become_format_strings() {
        assert_eq!(format_string("invoice:{invoice_id}"), "invoice:{}");
        assert_eq!(format_string("{a}/{b}:{a}"), "{}/{}:{}");
        assert_eq!(format_string("{{literal}}:{id}"), "{{literal}}:{}");
        assert_eq!(format_string("{{{id}}}"), "{{{}}}");
        assert_eq!(format_string("plain"), "plain");
    }
}
