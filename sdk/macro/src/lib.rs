//! The `#[task]` attribute of `runner-sdk`. Use it through `runner_sdk::task`;
//! this crate is an implementation detail.

use proc_macro::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, parse_macro_input};

/// Turns a plain function into the component's `run` export.
///
/// The function takes the job's [`Context`] and, optionally, its input
/// (any `serde::Deserialize` type), and returns
/// `Result<Output, TaskError>` with any `serde::Serialize` output:
///
/// ```ignore
/// #[runner_sdk::task]
/// fn run(ctx: &Context, input: MyInput) -> Result<MyOutput, TaskError> { .. }
/// ```
///
/// Exactly one function per component may carry the attribute.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[task] takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(&func) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#func #err).into()
        }
    }
}

fn expand(func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "a task function cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a task function cannot be generic",
        ));
    }
    if let Some(FnArg::Receiver(recv)) = sig.inputs.first() {
        return Err(syn::Error::new(
            recv.span(),
            "a task is a free function, not a method",
        ));
    }
    let name = &sig.ident;
    let span = sig.span();
    let call = match sig.inputs.len() {
        1 => quote_spanned!(span=> ::runner_sdk::__private::run_task_without_input(input, #name)),
        2 => quote_spanned!(span=> ::runner_sdk::__private::run_task(input, #name)),
        _ => {
            return Err(syn::Error::new(
                if sig.inputs.is_empty() {
                    sig.paren_token.span.join()
                } else {
                    sig.inputs.span()
                },
                "a task function takes `ctx: &Context` and optionally one input argument: \
                 fn run(ctx: &Context, input: MyInput) -> Result<MyOutput, TaskError>",
            ));
        }
    };
    Ok(quote! {
        #func

        const _: () = {
            struct __RunnerSdkTask;

            impl ::runner_sdk::__private::bindings::Guest for __RunnerSdkTask {
                fn run(
                    input: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::string::String,
                    ::runner_sdk::__private::bindings::TaskError,
                > {
                    #call
                }
            }

            ::runner_sdk::__export_task_impl!(
                __RunnerSdkTask with_types_in ::runner_sdk::__private::bindings
            );
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn error_of(func: ItemFn) -> String {
        match expand(&func) {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn two_arguments_parse_the_input() {
        let func: ItemFn = parse_quote!(
            fn run(ctx: &Context, input: In) -> Result<Out, TaskError> {
                todo!()
            }
        );
        let code = expand(&func).expect("expands").to_string();
        assert!(code.contains("run_task (input , run)"), "{code}");
        assert!(code.contains("__export_task_impl"), "{code}");
    }

    #[test]
    fn one_argument_ignores_the_input() {
        let func: ItemFn = parse_quote!(
            fn go(ctx: &Context) -> Result<(), TaskError> {
                Ok(())
            }
        );
        let code = expand(&func).expect("expands").to_string();
        assert!(
            code.contains("run_task_without_input (input , go)"),
            "{code}"
        );
    }

    #[test]
    fn rejects_what_cannot_be_a_task() {
        assert!(
            error_of(parse_quote!(
                async fn run(ctx: &Context) {}
            ))
            .contains("async")
        );
        assert!(
            error_of(parse_quote!(
                fn run<T>(ctx: &Context, t: T) {}
            ))
            .contains("generic")
        );
        assert!(
            error_of(parse_quote!(
                fn run(&self) {}
            ))
            .contains("method")
        );
        assert!(
            error_of(parse_quote!(
                fn run() {}
            ))
            .contains("optionally one input")
        );
        assert!(
            error_of(parse_quote!(
                fn run(c: &Context, a: u8, b: u8) {}
            ))
            .contains("optionally one input")
        );
    }
}
