//! The process runtime against real processes: a shell `bootstrap` that
//! speaks the Runtime API with curl, the way a custom Lambda runtime does.

use gale_process::{Invocation, Pool, Runtime, Spec};
use std::sync::Arc;
use std::time::Duration;

const BOOTSTRAP: &str = r#"#!/bin/sh
# A custom runtime: fetch, handle, answer; forever.
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
echo "init $AWS_LAMBDA_FUNCTION_NAME v$AWS_LAMBDA_FUNCTION_VERSION mem=$AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
while true; do
  headers=$(mktemp)
  body=$(curl -sS -D "$headers" "$api/next")
  id=$(grep -i '^lambda-runtime-aws-request-id:' "$headers" | tr -d '\r' | cut -d' ' -f2)
  case "$body" in
    fail) curl -sS -o /dev/null -X POST -H 'Lambda-Runtime-Function-Error-Type: Custom.Fail' \
            -d '{"errorMessage":"asked to fail","errorType":"Custom.Fail"}' "$api/$id/error" ;;
    hang) sleep 30 ;;
    exit) echo "exiting"; exit 3 ;;
    env)  curl -sS -o /dev/null -X POST -d "$HOME|$LAMBDA_TASK_ROOT|$HOSTNAME|$_HANDLER" "$api/$id/response" ;;
    *)    echo "handling $id"; curl -sS -o /dev/null -X POST -d "echo:$body" "$api/$id/response" ;;
  esac
  rm -f "$headers"
done
"#;

fn pool(name: &str) -> (Arc<Pool>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("gale-process-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("bootstrap"), BOOTSTRAP).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let package = gale_process::package::pack(&src).unwrap();
    let runtime = Runtime::new(dir.join("process")).unwrap();
    let spec = Spec {
        function: name.into(),
        version: 1,
        command: vec![],
        handler: Some("app.handler".into()),
        env: Default::default(),
        memory: 128 << 20,
        user: None,
        publish: None,
    };
    (Arc::new(runtime.prepare(spec, || Ok(package)).unwrap()), dir)
}

fn invocation(id: &str, payload: &str, timeout: Duration) -> Invocation {
    Invocation {
        request_id: id.into(),
        payload: payload.to_string().into(),
        timeout,
        cpu: None,
        client_context: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_runtime_serves_reports_and_recovers() {
    let (pool, dir) = pool("shell");
    let second = Duration::from_secs(5);

    let first = pool.invoke(invocation("r1", "hello", second), ()).await;
    assert_eq!(first.result.as_deref().unwrap(), b"echo:hello");
    assert!(first.cold_start && first.init.is_some());
    assert!(first.log.contains("init shell v1 mem=128"), "{}", first.log);
    assert!(first.log.contains("handling r1"), "{}", first.log);
    assert!(first.log.starts_with("START RequestId: r1"), "{}", first.log);
    assert!(
        first.log.contains("REPORT RequestId: r1\tDuration:"),
        "{}",
        first.log
    );

    let warm = pool.invoke(invocation("r2", "again", second), ()).await;
    assert_eq!(warm.result.as_deref().unwrap(), b"echo:again");
    assert!(!warm.cold_start, "the second invocation reuses the warm instance");
    assert_eq!(pool.warm_instances(), 1);

    let env = pool.invoke(invocation("r3", "env", second), ()).await;
    let env = String::from_utf8(env.result.unwrap().to_vec()).unwrap();
    let fields: Vec<&str> = env.split('|').collect();
    assert!(
        fields[0].contains("instances"),
        "HOME is the instance's own directory: {env}"
    );
    assert!(fields[1].ends_with("/functions/shell/1"), "{env}");
    assert_eq!(fields[2], "", "no host variable leaks in: {env}");
    assert_eq!(fields[3], "app.handler");

    let failed = pool.invoke(invocation("r4", "fail", second), ()).await;
    let error = failed.result.unwrap_err();
    assert_eq!(error.error_type, "Custom.Fail");
    assert_eq!(error.message(), "asked to fail");
    assert!(!failed.cold_start, "a handled error keeps the instance");

    let hung = pool
        .invoke(invocation("r5", "hang", Duration::from_millis(300)), ())
        .await;
    assert_eq!(hung.result.unwrap_err().error_type, "Sandbox.Timedout");
    assert_eq!(hung.outcome, gale_core::api::Outcome::Timeout);
    assert_eq!(
        pool.warm_instances(),
        0,
        "a timed-out instance is killed, not reused"
    );

    let after = pool.invoke(invocation("r6", "back", second), ()).await;
    assert_eq!(after.result.as_deref().unwrap(), b"echo:back");
    assert!(after.cold_start, "the next invocation gets a fresh instance");

    let crashed = pool.invoke(invocation("r7", "exit", second), ()).await;
    let error = crashed.result.unwrap_err();
    assert_eq!(error.error_type, "Runtime.ExitError");
    assert!(error.message().contains("exit status 3"), "{}", error.message());
    assert!(crashed.log.contains("exiting"), "{}", crashed.log);

    let recovered = pool.invoke(invocation("r8", "ok", second), ()).await;
    assert_eq!(recovered.result.as_deref().unwrap(), b"echo:ok");
    assert_eq!(pool.reap(Duration::ZERO), 1, "reaping stops the idle instance");
    drop(pool);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A root node whose data directory sits inside a directory other users
/// cannot enter (a 0700 home, a `mktemp -d` folder) still runs its process
/// functions as their own users: their files are kept where those users
/// can reach them, and the node's leftovers are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_node_runs_functions_whose_data_directory_is_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only a node running as root switches functions to users of their own");
        return;
    }
    let private = std::env::temp_dir().join(format!("gale-process-test-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("data");
    let src = private.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("bootstrap"), BOOTSTRAP).unwrap();
    std::fs::set_permissions(src.join("bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let package = gale_process::package::pack(&src).unwrap();

    // Where a runtime keeps its versions: `<tree>/functions/<name>/<version>`.
    let tree = |runtime: &Runtime| {
        runtime
            .root("private", 1)
            .ancestors()
            .nth(3)
            .unwrap()
            .to_path_buf()
    };

    let runtime = Runtime::new(data.join("process")).unwrap();
    // A uid and gid no account uses, as the node allocates them.
    let user = 290_000 + std::process::id() % 10_000;
    let spec = Spec {
        function: "private".into(),
        version: 1,
        command: vec![],
        handler: None,
        env: Default::default(),
        memory: 128 << 20,
        user: Some((user, user)),
        publish: None,
    };
    let pool = Arc::new(runtime.prepare(spec, || Ok(package)).unwrap());
    let env = pool
        .invoke(invocation("p1", "env", Duration::from_secs(5)), ())
        .await;
    let env = match env.result {
        Ok(body) => String::from_utf8(body.to_vec()).unwrap(),
        Err(e) => panic!(
            "the function does not run as its own user: {} {}",
            e.error_type,
            e.message()
        ),
    };
    let fields: Vec<&str> = env.split('|').collect();
    let here = tree(&runtime);
    assert!(!here.starts_with(&private), "{}", here.display());
    let task_root = std::path::Path::new(fields[1]);
    assert_eq!(task_root, runtime.root("private", 1), "{env}");
    assert!(std::path::Path::new(fields[0]).starts_with(&here), "HOME: {env}");

    // The function's files stay its own: its group may read them, nobody
    // else may enter.
    let meta = std::fs::metadata(task_root).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, user, 0o750));
    let meta = std::fs::metadata(here.join("cache").join("private")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user, 0o700));

    // The tree goes with the last user of it.
    drop(pool);
    drop(runtime);
    assert!(!here.exists(), "{}", here.display());

    // A tree still held by a runtime (here: one never dropped) is in use,
    // and the next start on the same data directory leaves it alone.
    let held = Runtime::new(data.join("process")).unwrap();
    let kept = tree(&held);
    std::mem::forget(held);
    let next = Runtime::new(data.join("process")).unwrap();
    assert!(kept.is_dir(), "a tree in use is kept: {}", kept.display());
    drop(next);
    std::fs::remove_dir_all(&kept).unwrap();

    // A killed node leaves its tree, unlocked, and its record behind; the
    // next start removes the tree.
    let left = std::env::temp_dir().join(format!("gale-process-left-{}", std::process::id()));
    std::fs::create_dir_all(left.join("functions")).unwrap();
    std::fs::write(
        data.join("process").join("elsewhere"),
        left.as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    let next = Runtime::new(data.join("process")).unwrap();
    assert!(
        !left.exists(),
        "the killed run's tree is removed: {}",
        left.display()
    );
    let here = tree(&next);
    drop(next);
    assert!(!here.exists(), "{}", here.display());
    std::fs::remove_dir_all(&private).unwrap();
}
