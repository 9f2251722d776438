//! `run msg client where broker = ... and topic = (name = ... and dbms =
//! ... and column.x.float = "bring [x]") [and topic = (...)]`, as EdgeLake
//! writes it (`run mqtt client` is the same command).

use super::mapping::{Column, Condition, Expr, Mapping, Type, TypeOf};

/// Where a subscription's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The node's own broker.
    Local,
    /// EdgeLake's REST path: `POST /` with `command: data` and `topic:` headers.
    Rest,
    /// An MQTT broker elsewhere.
    Remote { host: String, port: u16 },
}

/// One subscribed topic and how its messages map.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    /// The topic filter (`+` and `#` allowed).
    pub name: String,
    pub qos: Option<u8>,
    pub mapping: Mapping,
    /// `mapping` policies named by `policy = <id>`.
    pub policies: Vec<String>,
}

/// A parsed `run msg client`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSpec {
    pub broker: Broker,
    pub user: Option<String>,
    pub password: Option<String>,
    pub client_id: Option<String>,
    pub qos: u8,
    pub log: bool,
    pub user_agent: Option<String>,
    pub topics: Vec<Topic>,
}

impl ClientSpec {
    /// Which of the subscribed topics (filters) a message's topic is on.
    pub fn topic_of(&self, topic: &str) -> Option<usize> {
        self.topics
            .iter()
            .position(|t| t.name == topic || rumqttc::matches(topic, &t.name))
    }
}

/// Whether `cmd` is `run msg client ...` or `run mqtt client ...`.
pub fn is_run_client(words: &[&str]) -> bool {
    matches!(words, ["run", "msg" | "mqtt", "client", ..])
}

/// Parses a whole `run msg client where ...` command.
pub fn parse(cmd: &str) -> Result<ClientSpec, String> {
    let cmd = cmd
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let lower = cmd.to_ascii_lowercase();
    let at = lower
        .find(" where ")
        .or_else(|| lower.find("\nwhere "))
        .ok_or("expected: run msg client where broker = ... and topic = (name = ... and dbms = ... and table = ...)")?;
    let mut spec = ClientSpec {
        broker: Broker::Local,
        user: None,
        password: None,
        client_id: None,
        qos: 0,
        log: false,
        user_agent: None,
        topics: Vec::new(),
    };
    let mut broker = None;
    let mut port = None;
    for (k, v) in pairs(&cmd[at + 7..])? {
        match k.as_str() {
            "broker" => broker = Some(v),
            // Parsed below: only a remote broker's port counts.
            "port" => port = Some(v),
            "user" | "username" => spec.user = Some(v),
            "password" => spec.password = Some(v),
            "client_id" => spec.client_id = Some(v),
            "qos" => spec.qos = qos(&v)?,
            "log" | "log_error" => spec.log = v.eq_ignore_ascii_case("true"),
            "user-agent" | "user_agent" => spec.user_agent = Some(v),
            "topic" => spec.topics.push(topic(&v)?),
            // EdgeLake's own settings that tarn has no use for.
            "project_id" | "location" | "private_key" | "prep_dir" | "watch_dir" | "err_dir"
            | "blobs_dir" => {}
            other => return Err(format!("unknown option {other:?} of run msg client")),
        }
    }
    spec.broker = match broker.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => return Err("run msg client needs broker = <host>, local or rest".into()),
        Some("local") => Broker::Local,
        Some("rest") => Broker::Rest,
        Some(_) => {
            let host = broker.unwrap_or_default();
            for v in std::iter::once(&host).chain(port.as_ref()) {
                if v.starts_with('!') {
                    return Err(format!(
                        "{v} is an EdgeLake variable, which tarn does not keep: give its value"
                    ));
                }
            }
            let port = match port {
                None => 1883,
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a port number"))?,
            };
            Broker::Remote { host, port }
        }
    };
    if spec.topics.is_empty() {
        return Err("run msg client needs at least one topic = (name = ...)".into());
    }
    Ok(spec)
}

fn qos(v: &str) -> Result<u8, String> {
    match v.trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err(format!("qos must be 0, 1 or 2, not {v:?}")),
    }
}

/// `k = v` pairs joined by `and` (keys lower case, values unquoted).
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    split_and(s)
        .into_iter()
        .map(|part| {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key = value, not {part:?}"))?;
            Ok((k.trim().to_ascii_lowercase(), unquote(v.trim()).to_owned()))
        })
        .collect()
}

/// Splits on the word `and` (any case) outside quotes and parentheses.
pub fn split_and(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            },
        }
        if quote.is_none()
            && depth == 0
            && c.is_whitespace()
            && chars.len() >= i + 5
            && chars[i + 1..i + 4]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("and")
            && chars[i + 4].is_whitespace()
        {
            parts.push(std::mem::take(&mut cur));
            i += 5;
            continue;
        }
        cur.push(c);
        i += 1;
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

/// `(name = ... and dbms = ... and column.x.type = ...)`.
fn topic(v: &str) -> Result<Topic, String> {
    let inner = v
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("a topic is written topic = (name = ... and ...), not {v:?}"))?;
    let mut t = Topic {
        name: String::new(),
        qos: None,
        mapping: Mapping::default(),
        policies: Vec::new(),
    };
    for (k, v) in pairs(inner)? {
        if v.starts_with('!') {
            return Err(format!(
                "{k} = {v}: {v} is an EdgeLake variable, which tarn does not keep: give its value"
            ));
        }
        match k.as_str() {
            "name" => t.name = v,
            "qos" => t.qos = Some(qos(&v)?),
            "dbms" => t.mapping.dbms = Some(Expr::parse(&v)?),
            "table" => t.mapping.table = Some(Expr::parse(&v)?),
            "policy" => t.policies.push(v),
            k if k.starts_with("column.") => t.mapping.columns.push(column(&k[7..], &v)?),
            other => return Err(format!("unknown topic option {other:?}")),
        }
    }
    if t.name.is_empty() {
        return Err("a topic needs name = <topic filter>".into());
    }
    if !rumqttc::valid_filter(&t.name) {
        return Err(format!("{:?} is not a valid MQTT topic filter", t.name));
    }
    if t.policies.is_empty() && (t.mapping.dbms.is_none() || t.mapping.table.is_none()) {
        return Err(format!(
            "topic {:?} needs dbms and table (or policy = <mapping policy id>)",
            t.name
        ));
    }
    Ok(t)
}

/// `name.type = "bring [..]"` or `name = (type = .. and value = .. [and optional = true])`.
fn column(key: &str, v: &str) -> Result<Column, String> {
    let (name, ty) = match key.split_once('.') {
        Some((n, t)) => (n, Some(t)),
        None => (key, None),
    };
    if name.is_empty() {
        return Err(format!("column.{key}: the column has no name"));
    }
    let name = name.to_lowercase();
    let trimmed = v.trim();
    if let Some(inner) = trimmed.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        let mut c = Column {
            name,
            ty: TypeOf::Fixed(Type::Str),
            value: None,
            optional: false,
            default: None,
            condition: None,
        };
        let mut typed = ty.map(Type::parse).transpose()?.map(TypeOf::Fixed);
        for (k, v) in pairs(inner)? {
            match k.as_str() {
                "type" => {
                    typed = Some(match Expr::parse(&v)? {
                        Expr::Const(t) => TypeOf::Fixed(Type::parse(&t)?),
                        e => TypeOf::From(e),
                    })
                }
                "value" => c.value = Some(Expr::parse(&v)?),
                "optional" => c.optional = v.eq_ignore_ascii_case("true"),
                "default" => c.default = Some(serde_json::Value::String(v)),
                "condition" => c.condition = Some(Condition::parse(&v)?),
                other => return Err(format!("column {:?}: unknown option {other:?}", c.name)),
            }
        }
        c.ty = typed.ok_or_else(|| format!("column {:?} needs a type", c.name))?;
        if c.value.is_none() && c.default.is_none() {
            return Err(format!("column {:?} needs value = \"bring [...]\"", c.name));
        }
        return Ok(c);
    }
    let ty = ty.ok_or_else(|| {
        format!("column.{name} needs a type: column.{name}.float = \"bring [...]\"")
    })?;
    Ok(Column {
        name,
        ty: TypeOf::Fixed(Type::parse(ty)?),
        value: Some(Expr::parse(v)?),
        optional: false,
        default: None,
        condition: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edgelake_documentation_examples() {
        let cmd = r#"<run msg client where broker=139.144.46.246 and port=1883 and user=1883 and password=mqtt4AnyLog! and log=false and topic=(
    name=anylog-demo and
    dbms="bring [dbms]" and
    table="bring [table]" and
    column.timestamp.timestamp="bring [timestamp]" and
    column.value=(type=float and value="bring [value]")
)>"#;
        let s = parse(cmd).unwrap();
        assert_eq!(
            s.broker,
            Broker::Remote {
                host: "139.144.46.246".into(),
                port: 1883
            }
        );
        assert_eq!(s.password.as_deref(), Some("mqtt4AnyLog!"));
        let t = &s.topics[0];
        assert_eq!(t.name, "anylog-demo");
        assert_eq!(t.mapping.columns.len(), 2);
        assert_eq!(t.mapping.columns[1].ty, TypeOf::Fixed(Type::Float));

        let two = "run mqtt client where broker=local and log=false and topic=( name=anylog_test and policy = rnd_val and policy = device ) and topic = (name = a/+/c and dbms = d and table = t)";
        let s = parse(two).unwrap();
        assert_eq!(s.broker, Broker::Local);
        assert_eq!(s.topics[0].policies, ["rnd_val", "device"]);
        assert_eq!(s.topics[1].name, "a/+/c");

        // EdgeLake's scripts name the local ports by variables: not needed here.
        let local = "<run msg client where broker=local and port=!anylog_broker_port and log=false and topic=(\n    name=anylog-demo and\n    dbms=\"bring [dbms]\" and\n    table=\"bring [table]\" and\n    column.timestamp.timestamp=\"bring [timestamp]\" and\n    column.value=(type=float and value=\"bring [value]\")\n)>";
        assert_eq!(parse(local).unwrap().broker, Broker::Local);
        assert!(
            parse("run msg client where broker = !ip and port = 1 and topic = (name = x and dbms = d and table = t)")
                .unwrap_err()
                .contains("EdgeLake variable")
        );
        let rest = "run msg client where broker = rest and user-agent=anylog and topic = (name = test and dbms = \"bring [metadata][company]\" and table = \"bring [metadata][machine_name] _ [metadata][serial_number]\" and column.timestamp.timestamp = \"bring [ts]\" and column.value.int = \"bring [value]\")";
        assert_eq!(parse(rest).unwrap().broker, Broker::Rest);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "run msg client where topic = (name = x and dbms = d and table = t)",
            "run msg client where broker = local",
            "run msg client where broker = local and topic = (name = x)",
            "run msg client where broker = local and topic = (name = x and dbms = d and table = t and column.v = \"bring [v]\")",
            "run msg client where broker = local and topic = (name = x and dbms = d and table = t and column.v.blob = \"bring [v]\")",
            "run msg client where broker = local and qos = 3 and topic = (name = x and dbms = d and table = t)",
            "run msg client where broker = local and topic = (name = a/#/b and dbms = d and table = t)",
            "run msg client where broker = h and port = 99999 and topic = (name = x and dbms = d and table = t)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
