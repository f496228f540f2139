//! Exec in a pod through the API (the typed client's streaming call).

use orch_core::api::ApiClient;

/// What an exec session gave back: stdout, stderr, exit code.
pub async fn exec_in(
    client: &mut ApiClient,
    pod: &str,
    command: &[&str],
    stdin: Option<&[u8]>,
    tty: bool,
) -> Result<(String, String, Option<i32>), orch_core::api::ApiError> {
    use orch_core::api::proto::{ExecInput, ExecStart, exec_input, exec_output};
    let (input, inbound) = tokio::sync::mpsc::channel(4);
    if let Some(data) = stdin {
        input
            .send(ExecInput {
                input: Some(exec_input::Input::Stdin(data.to_vec())),
            })
            .await
            .expect("queue stdin");
        if !tty {
            input
                .send(ExecInput {
                    input: Some(exec_input::Input::CloseStdin(true)),
                })
                .await
                .expect("queue end of stdin");
        }
    }
    let start = ExecStart {
        namespace: "default".into(),
        name: pod.into(),
        command: command.iter().map(|c| c.to_string()).collect(),
        stdin: stdin.is_some(),
        tty,
        ..Default::default()
    };
    let mut stream = client.pod_exec(start, inbound).await?;
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| orch_core::api::ApiError::from_status(&s))?
    {
        match message.output {
            Some(exec_output::Output::Stdout(data)) => out.extend(data),
            Some(exec_output::Output::Stderr(data)) => err.extend(data),
            Some(exec_output::Output::ExitCode(exit)) => code = Some(exit),
            None => {}
        }
    }
    drop(input);
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code,
    ))
}
