//! The images, run: the analyzer's image (`make image`) in Podman answers `/healthz`,
//! registers a policy with its token and serves the filter's config, runs as a
//! non-root user, keeps its state on a volume across a restart, stops within 2 s of
//! SIGTERM, and says what is wrong with bad flags and missing tokens in its logs.
//! The filter's image (`make wasm-image`) has the layout Istio pulls.
//! Needs `make image wasm-image test-images` first (make test-containers does).

use canary_e2e::containers::{Container, Images, Volume, engine_command, engine_ok, eventually, get, run, unique_name};
use canary_e2e::repo_root;
use serde_json::Value as Json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The analyzer's user in the image (packaging/analyzer.Dockerfile, istio/analyzer.yaml).
const ANALYZER_UID: &str = "65532";
/// How long a fresh analyzer container may take to answer /healthz on a busy two-core
/// machine (it starts in well under a second when idle).
const START_LIMIT: Duration = Duration::from_secs(30);
/// The budget for a SIGTERM'd analyzer to exit.
const STOP_LIMIT: Duration = Duration::from_secs(2);
/// The size goal in docs/containers.md for the analyzer's image.
const IMAGE_SIZE_LIMIT_BYTES: u64 = 15_000_000;
/// A policy for a deployment of its own, registered through the API.
const POLICY: &str = "apiVersion: canary.wasm.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: container-test
spec:
  deployment: container-test
  ladder:
    - share: 5
    - share: 100
  default_window: 10m
";

fn token() -> String {
    // Unique per run, and recognisable if it ever showed up in a log.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("test-token-{}-{nanos:x}", std::process::id())
}

/// Runs the analyzer image detached with its port 8080 published on a loopback port
/// the engine picks; `extra` goes before the image, `args` after it.
fn analyzer(extra: &[&str], args: &[&str]) -> Container {
    let image = Images::analyzer();
    let mut all = vec!["-p", "127.0.0.1::8080"];
    all.extend_from_slice(extra);
    all.push(&image);
    all.extend_from_slice(args);
    Container::run("analyzer", &all)
}

async fn wait_healthy(client: &reqwest::Client, container: &Container, base: &str) {
    eventually(
        "the analyzer container answers /healthz with 200",
        START_LIMIT,
        || async { get(client, &format!("{base}/healthz")).await.filter(|(status, _)| *status == 200) },
        || container.logs(),
    )
    .await;
}

async fn register(client: &reqwest::Client, base: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.post(format!("{base}/v1/rollouts")).body(POLICY);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the analyzer answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[test]
fn the_analyzer_image_is_small_static_and_runs_as_a_numeric_non_root_user() {
    let image = Images::analyzer();
    let size: u64 = engine_ok(&["image", "inspect", "--format", "{{.Size}}", &image]).parse().unwrap();
    println!("analyzer image {image}: {size} bytes ({:.1} MB)", size as f64 / 1e6);
    assert!(size < IMAGE_SIZE_LIMIT_BYTES, "{size} bytes");
    assert_eq!(engine_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]), "65532:65532");
    let health = engine_ok(&["image", "inspect", "--format", "{{json .Config.Healthcheck}}", &image]);
    assert!(health.contains("/usr/local/bin/canary-healthcheck"), "a health check: {health}");

    // The binaries in the image: static (no ELF interpreter), CA roots compiled in.
    let container = unique_name("analyzer-files");
    engine_ok(&["create", "--name", &container, &image]);
    let dir = std::env::temp_dir().join(&container);
    std::fs::create_dir_all(&dir).unwrap();
    for binary in ["canary-analyzer", "canary-healthcheck"] {
        let to = dir.join(binary);
        let copied =
            run(&mut engine_command(&["cp", &format!("{container}:/usr/local/bin/{binary}"), to.to_str().unwrap()]));
        let bytes = std::fs::read(&to).unwrap_or_else(|e| panic!("{binary} copied out of the image: {e} {copied:?}"));
        assert!(!has_elf_interpreter(&bytes), "{binary} is static");
        if binary == "canary-analyzer" {
            // webpki-roots' certificates carry their subjects in the clear.
            assert!(contains(&bytes, b"ISRG Root X1") && contains(&bytes, b"DigiCert Global Root G2"), "CA roots");
        }
    }
    let _ = run(&mut engine_command(&["rm", "-f", &container]));
    let _ = std::fs::remove_dir_all(&dir);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (PT_INTERP).
fn has_elf_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (table, entry_size, entries) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..entries).any(|i| {
        let at = table + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

#[tokio::test]
async fn the_analyzer_container_registers_serves_config_and_keeps_state_across_a_restart() {
    let token = token();
    let volume = Volume::create("analyzer-state");
    let container = analyzer(
        &["-e", &format!("CANARY_ANALYZER_TOKEN={token}"), "-v", &format!("{}:/var/lib/canary-analyzer", volume.name)],
        &[],
    );
    let base = format!("http://{}", container.published(8080));
    let client = reqwest::Client::new();
    wait_healthy(&client, &container, &base).await;

    // Non-root: the analyzer process runs as the image's numeric user (as the host's
    // kernel sees it: rootful Podman maps no user namespace).
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uids.split_whitespace().skip(1).all(|uid| uid == ANALYZER_UID), "{uids}");
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(command.split(|b| *b == 0).filter(|a| !a.is_empty()).count(), 2, "canary-analyzer serve");
    // The image's own health check passes.
    engine_ok(&["healthcheck", "run", &container.name]);

    // Registration needs the token.
    let (status, body) = register(&client, &base, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = register(&client, &base, Some(&token)).await;
    assert_eq!(status, 201, "created: {body}");
    let (status, config) = get(&client, &format!("{base}/v1/rollouts/container-test/config")).await.unwrap();
    assert_eq!(status, 200, "{config}");
    let config: Json = serde_json::from_str(&config).unwrap();
    assert_eq!(config["deployment"], "container-test", "{config}");
    assert_eq!(config["share_bp"], 500, "the first step, 5 %: {config}");
    let generation = config["generation"].clone();

    // A restart (stop, start) keeps the rollout on the volume: same step, same generation.
    engine_ok(&["restart", "-t", "10", &container.name]);
    let base = format!("http://{}", container.published(8080));
    wait_healthy(&client, &container, &base).await;
    let (_, config) = get(&client, &format!("{base}/v1/rollouts/container-test/config")).await.unwrap();
    let config: Json = serde_json::from_str(&config).unwrap();
    assert_eq!((config["share_bp"].clone(), config["generation"].clone()), (Json::from(500), generation), "{config}");
    let (_, audit) = get(&client, &format!("{base}/v1/rollouts/container-test/audit")).await.unwrap();
    assert!(audit.contains("container-test"), "the registration's audit record survived: {audit}");

    let logs = container.logs();
    assert!(logs.contains("unauthorized request refused"), "the refused registration is logged:\n{logs}");
    assert!(!logs.contains(&token), "the token is never logged");
}

#[tokio::test]
async fn sigterm_stops_the_analyzer_container_within_2_s() {
    let container = analyzer(&[], &[]);
    let base = format!("http://{}", container.published(8080));
    let client = reqwest::Client::new();
    wait_healthy(&client, &container, &base).await;
    let sent_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    engine_ok(&["kill", "--signal", "TERM", &container.name]);
    let code = container.wait_exit(Duration::from_secs(30));
    // When the runtime saw it exit, not when `podman` got round to telling us.
    let finished_ns: u128 = container.inspect("{{.State.FinishedAt.UnixNano}}").parse().unwrap();
    let took = Duration::from_nanos(u64::try_from(finished_ns.saturating_sub(sent_ns)).unwrap());
    println!("SIGTERM to exit: {took:?}, exit code {code}");
    assert!(took < STOP_LIMIT, "{took:?}:\n{}", container.logs());
    assert_eq!(code, 0, "a clean exit:\n{}", container.logs());
    assert!(container.logs().contains("analyzer stopped"));
}

#[tokio::test]
async fn bad_flags_and_missing_tokens_are_explained_in_the_logs() {
    // An unknown flag: the container exits with clap's usage error naming it.
    let bad_flag = analyzer(&[], &["serve", "--max-scrape-byte", "10"]);
    assert_eq!(bad_flag.wait_exit(START_LIMIT), 2);
    let logs = bad_flag.logs();
    assert!(logs.contains("unexpected argument '--max-scrape-byte'"), "{logs}");
    assert!(logs.contains("--max-scrape-bytes"), "suggests the right flag: {logs}");

    // A bad value from the environment names the variable's flag and the allowed values.
    let bad_value = analyzer(&["-e", "CANARY_ANALYZER_LOG_FORMAT=xml"], &[]);
    assert_eq!(bad_value.wait_exit(START_LIMIT), 2);
    let logs = bad_value.logs();
    assert!(logs.contains("invalid value 'xml' for '--log-format"), "{logs}");
    assert!(logs.contains("text") && logs.contains("json"), "{logs}");

    // No token configured: registration is refused, the answer says why and the log
    // says so at start.
    let no_token = analyzer(&[], &[]);
    let base = format!("http://{}", no_token.published(8080));
    let client = reqwest::Client::new();
    wait_healthy(&client, &no_token, &base).await;
    let (status, body) = register(&client, &base, Some("anything")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("started without tokens") && body.contains("CANARY_ANALYZER_TOKEN"), "{body}");
    let logs = no_token.logs();
    assert!(logs.contains("overrides=false"), "{logs}");
    assert!(logs.contains("no bearer token") && logs.contains("refused with 403"), "{logs}");
    // Plain text for `podman logs` and `kubectl logs`: no terminal colour codes.
    assert!(!logs.contains('\u{1b}'), "ANSI escapes in the log:\n{logs:?}");

    // A wrong token: refused and logged, the token itself is not.
    let token = token();
    let with_token = analyzer(&["-e", &format!("CANARY_ANALYZER_TOKEN={token}")], &[]);
    let base = format!("http://{}", with_token.published(8080));
    wait_healthy(&client, &with_token, &base).await;
    let wrong = format!("{token}-wrong");
    let (status, _) = register(&client, &base, Some(&wrong)).await;
    assert_eq!(status, 401);
    let logs = with_token.logs();
    assert!(logs.contains("unauthorized request refused"), "{logs}");
    assert!(!logs.contains(&token), "no token in the log:\n{logs}");
}

/// What Istio's image fetcher accepts (istio/istio pkg/wasm/imagefetcher.go): the last
/// layer of an OCI image with media type `application/vnd.oci.image.layer.v1.tar+gzip`,
/// or of a Docker image with `application/vnd.docker.image.rootfs.diff.tar.gzip`, is a
/// gzipped tar with a file named `plugin.wasm`. The compat variant of the Wasm image
/// spec also asks for exactly one layer. Both manifests of the built image are checked,
/// written as a registry would receive them (gzip-compressed layers).
#[test]
fn the_wasm_image_has_the_layout_istio_pulls() {
    let image = Images::wasm();
    let module = std::fs::read(repo_root().join("target/wasm32-wasip1/wasm-release/canary_filter.wasm")).unwrap();
    let dir = std::env::temp_dir().join(unique_name("wasm-image"));
    std::fs::create_dir_all(&dir).unwrap();
    for (format, manifest_type, layer_type) in [
        ("oci", "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
        (
            "v2s2",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let out = dir.join(format);
        engine_ok(&[
            "push",
            "--quiet",
            "--format",
            format,
            // As a registry push writes them: the dir: transport alone stores layers as
            // they are kept locally, uncompressed, which Istio's fetcher refuses.
            "--compress",
            "--compression-format",
            "gzip",
            &image,
            &format!("dir:{}", out.display()),
        ]);
        let manifest: Json = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["mediaType"], manifest_type, "{manifest}");
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "one layer: {manifest}");
        assert_eq!(layers[0]["mediaType"], layer_type, "{manifest}");
        let digest = layers[0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = out.join(digest);
        let listing = run(std::process::Command::new("tar").arg("-tzf").arg(&blob));
        assert!(listing.status.success(), "the layer is a gzipped tar");
        let entries: Vec<String> = String::from_utf8_lossy(&listing.stdout).lines().map(str::to_string).collect();
        assert_eq!(entries, ["plugin.wasm"], "the module alone, at /plugin.wasm");
        let extracted = run(std::process::Command::new("tar").arg("-xzOf").arg(&blob).arg("plugin.wasm"));
        assert!(extracted.stdout == module, "plugin.wasm is the built module ({} bytes)", module.len());
        println!(
            "{format}: manifest {manifest_type}, one layer {layer_type} with plugin.wasm ({} bytes)",
            module.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
