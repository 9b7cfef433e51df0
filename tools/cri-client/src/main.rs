//! `hvlite-cri-client SOCKET HANDLER IMAGE CMD...`: the kubelet's calls for a one-container
//! pod, made on containerd's CRI socket with runtime handler HANDLER: RunPodSandbox,
//! CreateContainer, StartContainer, ContainerStatus until the container exits, then
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox. Prints each step, the
//! container's log and its exit code; exits non-zero on the first error.

use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

type Error = Box<dyn std::error::Error>;

async fn connect(socket: String) -> Result<RuntimeServiceClient<Channel>, Error> {
    let channel = Endpoint::try_from("http://[::]")?
        .connect_with_connector(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: hvlite-cri-client SOCKET HANDLER IMAGE CMD...".into());
    }
    let (socket, handler, image, cmd) = (&args[1], &args[2], &args[3], &args[4..]);
    let mut rt = connect(socket.clone()).await?;
    let v = rt.version(VersionRequest::default()).await?.into_inner();
    println!("version: {} {}", v.runtime_name, v.runtime_version);

    let logs = std::env::temp_dir().join(format!("hvlite-cri-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "hvlite-pod".into(),
            uid: format!("uid-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "hvlite-pod".into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: handler.clone(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    println!(
        "RunPodSandbox: {sandbox} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    let t0 = Instant::now();
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                command: cmd.to_vec(),
                log_path: "main.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .into_inner()
        .container_id;
    println!(
        "CreateContainer: {container} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await?;
    println!("StartContainer: ok");

    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        let st = rt
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or("ContainerStatus without a status")?;
        if st.state == ContainerState::ContainerExited as i32 {
            break st.exit_code;
        }
        if Instant::now() > deadline {
            return Err("the container did not exit within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("ContainerStatus: exited {exit}");
    let log = std::fs::read_to_string(logs.join("main.log")).unwrap_or_default();
    for line in log.lines() {
        // CRI log lines: TIMESTAMP STREAM TAG TEXT
        println!("log: {}", line.splitn(4, ' ').nth(3).unwrap_or(line));
    }
    rt.stop_container(StopContainerRequest {
        container_id: container.clone(),
        timeout: 5,
    })
    .await?;
    rt.remove_container(RemoveContainerRequest {
        container_id: container,
    })
    .await?;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await?;
    println!("removed the container and the pod");
    let _ = std::fs::remove_dir_all(&logs);
    std::process::exit(exit);
}
