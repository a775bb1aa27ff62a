//! Looking at RabbitMQ directly, around the gateway: publishing raw messages,
//! declaring foreign queues, reading queue counts.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub async fn connect() -> Connection {
    Connection::connect(&super::amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

/// Declares a durable queue that expires when unused (cleans itself up).
pub async fn declare_queue(conn: &Connection, name: &str) {
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare queue");
}

/// Publishes straight into a queue (default exchange), with publisher confirms.
pub async fn publish_to_queue(conn: &Connection, queue: &str, body: &[u8], props: BasicProperties) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// (ready, consumers) through a passive declare.
pub async fn ready_and_consumers(conn: &Connection, queue: &str) -> (u32, u32) {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    (q.message_count(), q.consumer_count())
}

pub async fn delete_queue(conn: &Connection, queue: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Those of `queues` that exist (a passive declare each, on a channel of its
/// own: a missing queue closes its channel).
pub async fn existing(conn: &Connection, queues: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for queue in queues {
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            found.push(queue.clone());
            let _ = ch.close(0, "done".into()).await;
        }
    }
    found
}

/// Runs `rabbitmqctl`; returns whether it succeeded and its standard output.
pub async fn rabbitmqctl(args: &[&str]) -> (bool, String) {
    match tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// [`rabbitmqctl`], failing the test when the command fails.
pub async fn rabbitmqctl_ok(args: &[&str]) -> String {
    let (ok, out) = rabbitmqctl(args).await;
    assert!(ok, "rabbitmqctl {args:?} failed: {out}");
    out
}

/// `rabbitmqctl {list} {columns}`: the rows whose first column starts with
/// `prefix`, each as its columns (rows short of a column are left out).
async fn rabbitmqctl_rows(list: &str, columns: &[&str], prefix: &str) -> Vec<Vec<String>> {
    let mut args = vec![list, "-q", "--no-table-headers"];
    args.extend_from_slice(columns);
    rabbitmqctl_ok(&args)
        .await
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|row| row.len() >= columns.len() && row[0].starts_with(prefix))
        .collect()
}

/// `rabbitmqctl list_queues name messages_ready messages_unacknowledged` for
/// every queue whose name starts with `prefix`.
pub async fn rabbitmqctl_list(prefix: &str) -> Vec<(String, u64, u64)> {
    let columns = ["name", "messages_ready", "messages_unacknowledged"];
    rabbitmqctl_rows("list_queues", &columns, prefix)
        .await
        .into_iter()
        .filter_map(|row| Some((row[0].clone(), row[1].parse().ok()?, row[2].parse().ok()?)))
        .collect()
}

/// `rabbitmqctl list_queues name messages_unacknowledged consumers` for every
/// queue whose name starts with `prefix`.
pub async fn rabbitmqctl_unacked_and_consumers(prefix: &str) -> Vec<(String, u64, u64)> {
    let columns = ["name", "messages_unacknowledged", "consumers"];
    rabbitmqctl_rows("list_queues", &columns, prefix)
        .await
        .into_iter()
        .filter_map(|row| Some((row[0].clone(), row[1].parse().ok()?, row[2].parse().ok()?)))
        .collect()
}

/// `rabbitmqctl list_consumers queue_name channel_pid`: the channel (an
/// Erlang process id) that carries each consumer, for queues starting with
/// `prefix`.
pub async fn rabbitmqctl_consumer_channels(prefix: &str) -> Vec<(String, String)> {
    rabbitmqctl_rows("list_consumers", &["queue_name", "channel_pid"], prefix)
        .await
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect()
}

/// (ready, unacked) of one queue as RabbitMQ reports it.
pub async fn rabbitmqctl_counts(queue: &str) -> (u64, u64) {
    rabbitmqctl_list(queue)
        .await
        .into_iter()
        .find(|(name, _, _)| name == queue)
        .map(|(_, r, u)| (r, u))
        .unwrap_or_else(|| panic!("queue {queue} not listed by rabbitmqctl"))
}
