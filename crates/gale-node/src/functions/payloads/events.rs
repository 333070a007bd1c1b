//! The payloads of event triggers: CloudEvents, or the batches Lambda's
//! event sources send (SQS, DynamoDB Streams, Amazon MQ, self-managed
//! Kafka, S3, EventBridge schedules), and which events a handler's answer
//! says failed.

use super::ACCOUNT;
use crate::functions::triggers::SCHEDULE_PREFIX;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cloudevents::{AttributesReader, Data, Event};
use gale_process::FunctionError;
use serde_json::{Map, Value, json};

/// The payload for a chunk of events, by the trigger's format.
pub fn events_payload(
    format: gale_core::manifest::EventFormat,
    topic: &str,
    region: &str,
    events: &[(&Event, u32)],
) -> Bytes {
    use gale_core::manifest::EventFormat;
    if let Some(n) = topic.strip_prefix(SCHEDULE_PREFIX)
        && let [(event, _)] = events
    {
        return scheduled_event(event, n, region);
    }
    let value = match format {
        EventFormat::Cloudevents => {
            let mut all: Vec<Value> = events
                .iter()
                .map(|(e, _)| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect();
            if all.len() == 1 {
                all.pop().unwrap_or(Value::Null)
            } else {
                Value::Array(all)
            }
        }
        EventFormat::Sqs => {
            json!({ "Records": events.iter().map(|(e, attempts)| sqs_record(e, *attempts, topic, region)).collect::<Vec<_>>() })
        }
        EventFormat::Dynamodb => {
            json!({ "Records": events.iter().map(|(e, _)| dynamodb_record(e, topic, region)).collect::<Vec<_>>() })
        }
        EventFormat::Rabbitmq => rabbitmq_payload(events, topic, region),
        EventFormat::Kafka => kafka_event(events.iter().map(|(e, _)| *e), topic),
        // A bucket notification's data is S3's record itself.
        EventFormat::S3 => {
            let records: Vec<Value> = events
                .iter()
                .map(|(e, _)| match e.data() {
                    Some(Data::Json(v)) => v.clone(),
                    _ => Value::Null,
                })
                .collect();
            json!({ "Records": records })
        }
    };
    Bytes::from(value.to_string())
}

fn sqs_record(event: &Event, attempts: u32, topic: &str, region: &str) -> Value {
    let body = match event.data() {
        Some(Data::String(s)) => s.clone(),
        Some(Data::Json(v)) => v.to_string(),
        Some(Data::Binary(b)) => B64.encode(b),
        None => String::new(),
    };
    let sent = event.time().map_or(0, |t| t.timestamp_millis());
    let mut attributes = Map::new();
    let mut put = |name: &str, value: String| {
        attributes.insert(name.to_string(), json!({ "stringValue": value, "dataType": "String", "stringListValues": [], "binaryListValues": [] }));
    };
    put("ce-type", event.ty().to_string());
    put("ce-source", event.source().to_string());
    if let Some(s) = event.subject() {
        put("ce-subject", s.to_string());
    }
    if let Some(ct) = event.datacontenttype() {
        put("content-type", ct.to_string());
    }
    for (name, value) in event.iter_extensions() {
        put(&format!("ce-{name}"), value.to_string());
    }
    json!({
        "messageId": event.id(),
        "receiptHandle": format!("{topic}/{}", event.id()),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": attempts.to_string(),
            "SentTimestamp": sent.to_string(),
            "SenderId": event.source().to_string(),
            "ApproximateFirstReceiveTimestamp": sent.to_string(),
        },
        "messageAttributes": attributes,
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:{region}:{ACCOUNT}:{topic}"),
        "awsRegion": region,
    })
}

/// A DynamoDB Streams record of a row-change event (`NEW_AND_OLD_IMAGES`);
/// its `SequenceNumber` is the event id, which `batchItemFailures` names.
fn dynamodb_record(event: &Event, topic: &str, region: &str) -> Value {
    let data = match event.data() {
        Some(Data::Json(v)) => v.clone(),
        _ => Value::Null,
    };
    let name = match data["op"].as_str() {
        Some("u") => "MODIFY",
        Some("d" | "t") => "REMOVE",
        _ => "INSERT",
    };
    let image = |v: &Value| v.as_object().map(attribute_map);
    let mut change = json!({
        "ApproximateCreationDateTime": event.time().map_or(0, |t| t.timestamp()),
        "Keys": image(&data["key"]).unwrap_or_default(),
        "SequenceNumber": event.id(),
        "SizeBytes": data.to_string().len(),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if let Some(new) = image(&data["after"]) {
        change["NewImage"] = Value::Object(new);
    }
    if let Some(old) = image(&data["before"]) {
        change["OldImage"] = Value::Object(old);
    }
    let table = data["source"]["table"].as_str().unwrap_or(topic);
    json!({
        "eventID": event.id(),
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": change,
        "eventSourceARN": format!("arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}/stream/{topic}"),
    })
}

/// Amazon MQ's RabbitMQ event: the events grouped by `<queue>::<vhost>`
/// (as a `rabbitmq` source read them; events from elsewhere under the
/// topic's name and vhost `/`), each with its basic properties, the
/// `redelivered` flag and the body in base64.
fn rabbitmq_payload(events: &[(&Event, u32)], topic: &str, region: &str) -> Value {
    let mut by_queue: Map<String, Value> = Map::new();
    for (event, _) in events {
        let ext = |name: &str| event.extension(name).map(|v| v.to_string());
        let queue = ext("rmqqueue").unwrap_or_else(|| topic.to_string());
        let vhost = ext("rmqvhost").unwrap_or_else(|| "/".into());
        let body: Vec<u8> = match event.data() {
            Some(Data::String(s)) => s.clone().into_bytes(),
            Some(Data::Json(v)) => v.to_string().into_bytes(),
            Some(Data::Binary(b)) => b.clone(),
            None => Vec::new(),
        };
        let mut set: Map<String, Value> = ext("rmqproperties")
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default();
        if !set.contains_key("contentType")
            && let Some(ct) = event.datacontenttype()
        {
            set.insert("contentType".into(), ct.into());
        }
        if !set.contains_key("messageId") {
            set.insert("messageId".into(), event.id().into());
        }
        // Lambda carries string headers as their bytes.
        if let Some(Value::Object(headers)) = set.get_mut("headers") {
            for v in headers.values_mut() {
                if let Value::String(s) = v {
                    *v = json!({ "bytes": s.as_bytes() });
                }
            }
        }
        let timestamp = match set.get("timestamp").and_then(Value::as_i64) {
            Some(s) => jiff::Timestamp::from_second(s).ok(),
            None => event
                .time()
                .and_then(|t| jiff::Timestamp::from_second(t.timestamp()).ok()),
        };
        let mut properties = Map::new();
        for name in [
            "contentType",
            "contentEncoding",
            "headers",
            "deliveryMode",
            "priority",
            "correlationId",
            "replyTo",
            "expiration",
            "messageId",
        ] {
            properties.insert(name.into(), set.remove(name).unwrap_or(Value::Null));
        }
        properties.insert(
            "timestamp".into(),
            timestamp.map_or(Value::Null, |t| {
                t.strftime("%b %-d, %Y, %-I:%M:%S %p").to_string().into()
            }),
        );
        for name in ["type", "userId", "appId", "clusterId"] {
            properties.insert(name.into(), set.remove(name).unwrap_or(Value::Null));
        }
        properties.insert("bodySize".into(), body.len().into());
        let message = json!({
            "basicProperties": properties,
            "redelivered": ext("rmqredelivered").as_deref() == Some("true"),
            "data": B64.encode(&body),
        });
        match by_queue
            .entry(format!("{queue}::{vhost}"))
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(message),
            _ => unreachable!("only lists are inserted"),
        }
    }
    json!({
        "eventSource": "aws:rmq",
        "eventSourceArn": format!("arn:aws:mq:{region}:{ACCOUNT}:broker:gale:{topic}"),
        "rmqMessagesByQueue": by_queue,
    })
}

/// Lambda's self-managed Kafka event: the records by `<topic>-<partition>`,
/// in the order they came. A record's topic, partition, offset, timestamp,
/// raw key and headers are the `kafka*` extensions a `kafka` source keeps
/// (`sources/kafka/message.rs`); for other events (a CloudEvent that came
/// over Kafka as itself, or one from elsewhere) the Gale topic stands for
/// the Kafka topic, the partition is 0, the offset the record's place in
/// the batch, the key the `partitionkey` and the headers the event's
/// attributes by the Kafka binding (`ce_`).
fn kafka_event<'a>(events: impl Iterator<Item = &'a Event>, topic: &str) -> Value {
    use crate::brokers::kafka::*;
    let mut records: Map<String, Value> = Map::new();
    let mut servers = String::new();
    for (n, event) in events.enumerate() {
        let ext = |name: &str| event.extension(name).map(|v| v.to_string());
        let kafka_topic = ext(EXT_TOPIC).unwrap_or_else(|| topic.to_string());
        let partition: i64 = ext(EXT_PARTITION).and_then(|p| p.parse().ok()).unwrap_or(0);
        let offset: i64 = ext(EXT_OFFSET).and_then(|o| o.parse().ok()).unwrap_or(n as i64);
        let timestamp: i64 = ext(EXT_TIMESTAMP)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| event.time().map_or(0, |t| t.timestamp_millis()));
        let timestamp_type = ext(EXT_TIMESTAMP_TYPE).unwrap_or_else(|| "CREATE_TIME".into());
        if servers.is_empty()
            && let Some(s) = ext(EXT_SERVERS)
        {
            servers = s;
        }
        let key = ext(EXT_KEY)
            .or_else(|| ext("key").map(|k| B64.encode(k)))
            .or_else(|| ext("partitionkey").map(|k| B64.encode(k)));
        let value = match event.data() {
            None => Vec::new(),
            Some(Data::Binary(b)) => b.clone(),
            Some(Data::String(s)) => s.clone().into_bytes(),
            Some(Data::Json(v)) => v.to_string().into_bytes(),
        };
        let headers: Vec<Value> = match ext(EXT_HEADERS) {
            Some(sent) => serde_json::from_str::<Vec<(String, String)>>(&sent)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| json!({ k: B64.decode(v).unwrap_or_default() }))
                .collect(),
            None => {
                let out = crate::delivery::sinks::Outgoing::new(event, gale_core::SinkMode::Binary, "ce_");
                out.headers
                    .into_iter()
                    .chain(out.content_type.map(|ct| ("content-type".to_string(), ct)))
                    .map(|(k, v)| json!({ k: v.into_bytes() }))
                    .collect()
            }
        };
        let mut record = json!({
            "topic": kafka_topic,
            "partition": partition,
            "offset": offset,
            "timestamp": timestamp,
            "timestampType": timestamp_type,
            "value": B64.encode(value),
            "headers": headers,
        });
        if let Some(key) = key {
            record["key"] = key.into();
        }
        match records
            .entry(format!("{kafka_topic}-{partition}"))
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(list) => list.push(record),
            _ => unreachable!("only arrays are inserted"),
        }
    }
    json!({ "eventSource": "SelfManagedKafka", "bootstrapServers": servers, "records": records })
}

/// A row's columns as DynamoDB attribute values.
fn attribute_map(row: &Map<String, Value>) -> Map<String, Value> {
    row.iter().map(|(k, v)| (k.clone(), attribute(v))).collect()
}

fn attribute(v: &Value) -> Value {
    match v {
        Value::Null => json!({ "NULL": true }),
        Value::Bool(b) => json!({ "BOOL": b }),
        Value::Number(n) => json!({ "N": n.to_string() }),
        Value::String(s) => json!({ "S": s }),
        Value::Array(items) => json!({ "L": items.iter().map(attribute).collect::<Vec<_>>() }),
        Value::Object(o) => json!({ "M": attribute_map(o) }),
    }
}

/// EventBridge's scheduled event for a schedule firing (`rule` is the
/// schedule topic's `<function>.<n>`).
fn scheduled_event(event: &Event, rule: &str, region: &str) -> Bytes {
    let time = event
        .time()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    Bytes::from(
        json!({
            "version": "0",
            "id": event.id(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": ACCOUNT,
            "time": time,
            "region": region,
            "resources": [format!("arn:aws:events:{region}:{ACCOUNT}:rule/{rule}")],
            "detail": {},
        })
        .to_string(),
    )
}

/// Which events of a chunk failed, from the handler's answer: all of them
/// for an error, none for success, or those an SQS-format answer names in
/// `batchItemFailures` (with the DynamoDB format, those and every later
/// one; a malformed answer fails the whole batch).
pub fn failures(
    format: gale_core::manifest::EventFormat,
    result: &Result<Bytes, FunctionError>,
    ids: &[&str],
) -> Vec<Option<String>> {
    let all = |why: String| ids.iter().map(|_| Some(why.clone())).collect();
    let answer = match result {
        Err(e) => return all(format!("{}: {}", e.error_type, e.message())),
        Ok(a) => a,
    };
    use gale_core::manifest::EventFormat;
    if !matches!(format, EventFormat::Sqs | EventFormat::Dynamodb) {
        return vec![None; ids.len()];
    }
    let value: Value = match serde_json::from_slice(answer) {
        Ok(v) => v,
        Err(_) if answer.is_empty() => return vec![None; ids.len()],
        Err(_) => return all("the handler's answer is not JSON".into()),
    };
    let failed = match value.get("batchItemFailures") {
        None | Some(Value::Null) => return vec![None; ids.len()],
        Some(Value::Array(items)) => {
            let named: Option<Vec<&str>> = items
                .iter()
                .map(|i| i.get("itemIdentifier").and_then(|v| v.as_str()))
                .collect();
            match named {
                Some(n) if n.iter().all(|id| ids.contains(id)) => n,
                _ => return all("the handler's batchItemFailures names unknown or malformed items".into()),
            }
        }
        Some(_) => return all("the handler's batchItemFailures is not a list".into()),
    };
    // A stream is retried from its first failed record on, in order.
    let from = match format {
        EventFormat::Dynamodb => ids.iter().position(|id| failed.contains(id)),
        _ => None,
    };
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            if failed.contains(id) {
                Some("the handler listed it in batchItemFailures".to_string())
            } else if from.is_some_and(|first| i > first) {
                Some("an earlier record of the batch failed".to_string())
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gale_core::manifest::EventFormat;

    #[test]
    fn row_changes_become_dynamodb_stream_records_retried_from_the_first_failure() {
        let event: Event = serde_json::from_value(json!({
            "specversion": "1.0", "id": "db/0/16B3748/1", "source": "/gale/postgresql/shop/public.orders",
            "type": "gale.db.row.updated", "time": "2026-12-07T10:00:00Z", "datacontenttype": "application/json",
            "data": {"op": "u", "key": {"id": 7}, "before": {"id": 7, "paid": false},
                     "after": {"id": 7, "paid": true, "amount": "12.50", "doc": {"tags": ["a"]}, "note": null},
                     "source": {"table": "orders"}}
        }))
        .unwrap();
        let payload: Value = serde_json::from_slice(&events_payload(
            EventFormat::Dynamodb,
            "order-rows",
            "local",
            &[(&event, 1)],
        ))
        .unwrap();
        let record = &payload["Records"][0];
        assert_eq!(record["eventName"], "MODIFY");
        assert_eq!(record["eventSource"], "aws:dynamodb");
        let change = &record["dynamodb"];
        assert_eq!(change["Keys"], json!({"id": {"N": "7"}}));
        assert_eq!(change["OldImage"]["paid"], json!({"BOOL": false}));
        assert_eq!(
            change["NewImage"],
            json!({"id": {"N": "7"}, "paid": {"BOOL": true}, "amount": {"S": "12.50"},
                   "doc": {"M": {"tags": {"L": [{"S": "a"}]}}}, "note": {"NULL": true}})
        );
        assert_eq!(change["SequenceNumber"], "db/0/16B3748/1");
        assert_eq!(change["ApproximateCreationDateTime"], 1_796_637_600);

        let ids = ["a", "b", "c"];
        let answer = Ok(Bytes::from(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#));
        let failed = failures(EventFormat::Dynamodb, &answer, &ids);
        assert!(failed[0].is_none() && failed[1].is_some() && failed[2].is_some());
    }

    #[test]
    fn rabbitmq_messages_become_amazon_mq_events_by_queue() {
        let from_source: Event = serde_json::from_value(json!({
            "specversion": "1.0", "id": "q/m-1", "source": "/gale/rabbitmq/%2F/orders",
            "type": "gale.rabbitmq.message", "datacontenttype": "text/plain", "data": "hello",
            "rmqqueue": "orders", "rmqvhost": "/", "rmqredelivered": "true",
            "rmqproperties": r#"{"contentType":"text/plain","messageId":"m-1","deliveryMode":2,"timestamp":2021,"headers":{"Region":"eu","n":10}}"#
        }))
        .unwrap();
        let other: Event = serde_json::from_value(json!({
            "specversion": "1.0", "id": "e-2", "source": "/shop", "type": "t",
            "datacontenttype": "application/json", "data": {"k": 1}
        }))
        .unwrap();
        let payload: Value = serde_json::from_slice(&events_payload(
            EventFormat::Rabbitmq,
            "orders-in",
            "local",
            &[(&from_source, 1), (&other, 1), (&from_source, 2)],
        ))
        .unwrap();
        assert_eq!(payload["eventSource"], "aws:rmq");
        assert!(
            payload["eventSourceArn"]
                .as_str()
                .unwrap()
                .starts_with("arn:aws:mq:local:")
        );
        let queue = payload["rmqMessagesByQueue"]["orders::/"].as_array().unwrap();
        assert_eq!(queue.len(), 2);
        let m = &queue[0];
        assert_eq!(m["redelivered"], true);
        assert_eq!(B64.decode(m["data"].as_str().unwrap()).unwrap(), b"hello");
        let p = &m["basicProperties"];
        assert_eq!(
            (&p["contentType"], &p["messageId"], &p["deliveryMode"]),
            (&json!("text/plain"), &json!("m-1"), &json!(2))
        );
        assert_eq!(
            p["headers"]["Region"],
            json!({"bytes": [101, 117]}),
            "strings as their bytes"
        );
        assert_eq!(p["headers"]["n"], 10);
        assert_eq!(p["timestamp"], "Jan 1, 1970, 12:33:41 AM");
        assert_eq!((&p["bodySize"], &p["priority"]), (&json!(5), &Value::Null));
        // An event from elsewhere: under the topic's name.
        let m = &payload["rmqMessagesByQueue"]["orders-in::/"][0];
        assert_eq!(m["redelivered"], false);
        assert_eq!(B64.decode(m["data"].as_str().unwrap()).unwrap(), br#"{"k":1}"#);
        assert_eq!(m["basicProperties"]["messageId"], "e-2");
    }

    #[test]
    fn sqs_answers_retry_only_the_named_items() {
        let ids = ["a", "b", "c"];
        let ok = |s: &str| Ok(Bytes::from(s.to_string()));
        assert_eq!(failures(EventFormat::Sqs, &ok(""), &ids), vec![None, None, None]);
        assert_eq!(
            failures(EventFormat::Sqs, &ok("null"), &ids),
            vec![None, None, None]
        );
        assert_eq!(
            failures(EventFormat::Sqs, &ok(r#"{"batchItemFailures":[]}"#), &ids),
            vec![None, None, None]
        );
        let partial = failures(
            EventFormat::Sqs,
            &ok(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#),
            &ids,
        );
        assert!(partial[0].is_none() && partial[1].is_some() && partial[2].is_none());
        let malformed = failures(EventFormat::Sqs, &ok(r#"{"batchItemFailures":[{"x":1}]}"#), &ids);
        assert!(malformed.iter().all(Option::is_some));
        let error = Err(FunctionError::new("E", "boom"));
        assert!(
            failures(EventFormat::Sqs, &error, &ids)
                .iter()
                .all(Option::is_some)
        );
        assert!(
            failures(EventFormat::Cloudevents, &error, &ids)
                .iter()
                .all(Option::is_some)
        );
    }

    #[test]
    fn kafka_records_become_lambdas_self_managed_kafka_event() {
        use crate::sources::kafka::message::{Record, record_event};
        let plain = |partition: i32, offset: i64, key: Option<&'static [u8]>, value: &'static [u8]| {
            let r = Record {
                topic: "orders",
                partition,
                offset,
                timestamp: Some((1_796_637_600_000 + offset, "CREATE_TIME")),
                key,
                value,
                headers: vec![("trace", Some(b"t-1")), ("bin", Some(&[0, 255]))],
            };
            let stored = record_event(
                &r,
                format!("k/orders/{partition}/{offset}"),
                "k1:9092,k2:9092",
                Default::default(),
            )
            .unwrap();
            crate::events::decode(&stored.body).unwrap()
        };
        let events = [
            plain(0, 7, Some(b"c-1"), br#"{"qty":2}"#),
            plain(1, 3, Some(&[0, 159]), b"hello"),
            plain(0, 8, None, &[1, 2, 3]),
        ];
        let batch: Vec<(&Event, u32)> = events.iter().map(|e| (e, 1)).collect();
        let payload: Value = serde_json::from_slice(&events_payload(
            EventFormat::Kafka,
            "order-events",
            "local",
            &batch,
        ))
        .unwrap();
        assert_eq!(payload["eventSource"], "SelfManagedKafka");
        assert_eq!(payload["bootstrapServers"], "k1:9092,k2:9092");
        let p0 = payload["records"]["orders-0"].as_array().unwrap();
        assert_eq!(p0.len(), 2);
        assert_eq!(
            (p0[0]["offset"].as_i64(), p0[1]["offset"].as_i64()),
            (Some(7), Some(8))
        );
        let r = &p0[0];
        assert_eq!(
            (r["topic"].as_str(), r["partition"].as_i64()),
            (Some("orders"), Some(0))
        );
        assert_eq!(r["timestamp"], 1_796_637_600_007i64);
        assert_eq!(r["timestampType"], "CREATE_TIME");
        assert_eq!(B64.decode(r["key"].as_str().unwrap()).unwrap(), b"c-1");
        assert_eq!(B64.decode(r["value"].as_str().unwrap()).unwrap(), br#"{"qty":2}"#);
        assert_eq!(r["headers"], json!([{"trace": [116, 45, 49]}, {"bin": [0, 255]}]));
        assert!(p0[1].get("key").is_none(), "a record without a key has none");
        assert_eq!(B64.decode(p0[1]["value"].as_str().unwrap()).unwrap(), [1, 2, 3]);
        let r = &payload["records"]["orders-1"][0];
        assert_eq!(B64.decode(r["key"].as_str().unwrap()).unwrap(), [0, 159]);
        assert_eq!(B64.decode(r["value"].as_str().unwrap()).unwrap(), b"hello");

        // An event not from a Kafka record still makes a record.
        let other: Event = serde_json::from_value(json!({
            "specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.placed",
            "partitionkey": "c-9", "time": "2026-12-07T10:00:00Z", "data": {"n": 1}
        }))
        .unwrap();
        let payload: Value =
            serde_json::from_slice(&events_payload(EventFormat::Kafka, "t", "local", &[(&other, 1)]))
                .unwrap();
        let r = &payload["records"]["t-0"][0];
        assert_eq!(B64.decode(r["key"].as_str().unwrap()).unwrap(), b"c-9");
        assert_eq!(r["timestamp"], 1_796_637_600_000i64);
        assert!(
            r["headers"]
                .as_array()
                .unwrap()
                .contains(&json!({"ce_id": b"e-1".to_vec()}))
        );
    }
}
