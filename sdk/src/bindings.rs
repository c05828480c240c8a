//! The bindings generated from `wit/task.wit`. Private to the SDK: task
//! authors use the typed wrappers in the other modules, and the `#[task]`
//! macro reaches the export glue through `__private`.

wit_bindgen::generate!({
    world: "task",
    path: "wit",
    // The export macro is used by the `#[task]` expansion in the task's crate,
    // so it is exported from this crate under a name nobody calls by hand.
    pub_export_macro: true,
    export_macro_name: "__runner_sdk_export",
    default_bindings_module: "::runner_sdk::__private::bindings",
});
