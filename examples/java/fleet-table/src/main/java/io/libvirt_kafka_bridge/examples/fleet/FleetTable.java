package io.libvirt_kafka_bridge.examples.fleet;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.time.Duration;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The fleet as a Kafka Streams KTable: domain UUID to the latest DomainRecord, read from the bridge's
 * compacted domains topic. A tombstone (null value) removes its key from the table.
 *
 * <pre>
 * java -jar fleet-table.jar --bootstrap-servers B --schema domain_record.avsc [--topic libvirt.domains]
 *     [--application-id ID] [--state-dir DIR] [--print-when-caught-up [--timeout-s 60]]
 * </pre>
 *
 * Runs until Ctrl-C, printing each change of the table. With {@code --print-when-caught-up} it prints
 * nothing until it has processed the topic up to the end offsets seen at start, then prints the table
 * from its state store (an interactive query) as one JSON object and exits.
 */
public final class FleetTable {
    /** The state store holding the table, for interactive queries. */
    public static final String STORE = "fleet";

    private FleetTable() {}

    /** The topology: one table, materialized in an in-memory store (a fleet fits in memory). */
    public static Topology topology(String topic, Serde<GenericRecord> domainRecords, boolean printChanges) {
        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, GenericRecord> fleet = builder.table(
                topic,
                Consumed.with(Serdes.String(), domainRecords),
                Materialized.<String, GenericRecord>as(Stores.inMemoryKeyValueStore(STORE))
                        .withKeySerde(Serdes.String())
                        .withValueSerde(domainRecords));
        if (printChanges) {
            // One JSON line per change: the domain as the table now holds it, or removed: true.
            ObjectMapper json = new ObjectMapper();
            fleet.toStream().foreach((uuid, record) -> {
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("uuid", uuid);
                if (record == null) {
                    line.put("removed", true);
                } else {
                    line.putAll(describe(record));
                }
                try {
                    System.out.println(json.writeValueAsString(line));
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            });
        }
        return builder.build();
    }

    /**
     * Whether the table has a live domain for this record. A DELETED record is the last word for a
     * domain that is gone; the bridge follows it with a tombstone, which removes the key.
     */
    public static boolean live(GenericRecord record) {
        return record != null && !"DELETED".equals(String.valueOf(record.get("kind")));
    }

    private static Map<String, Object> describe(GenericRecord record) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("name", String.valueOf(record.get("name")));
        out.put("host", String.valueOf(record.get("host")));
        Object state = record.get("state");
        out.put("state", state == null ? null : state.toString());
        out.put("version", record.get("version"));
        out.put("kind", String.valueOf(record.get("kind")));
        return out;
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> flags = parseFlags(args);
        String bootstrap = required(flags, "bootstrap-servers");
        String topic = flags.getOrDefault("topic", "libvirt.domains");
        Schema schema = new Schema.Parser().parse(new File(required(flags, "schema")));
        boolean once = flags.containsKey("print-when-caught-up");

        Properties props = new Properties();
        // A fresh id per one-off run: its position must not come from an earlier run's commits.
        props.put(StreamsConfig.APPLICATION_ID_CONFIG,
                flags.getOrDefault("application-id", once ? "fleet-table-" + UUID.randomUUID() : "fleet-table"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.STATE_DIR_CONFIG, flags.getOrDefault("state-dir",
                Files.createTempDirectory("fleet-table").toString()));
        // Foreign or corrupt bytes on the topic are logged and skipped, never fatal.
        props.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG,
                LogAndContinueExceptionHandler.class.getName());
        // Kafka 5's default, set now (Kafka 4.x warns at start-up without it).
        props.put("processing.exception.handler.global.enabled", "true");
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // Forward every update at once: a record cache would hold changes back until the next commit.
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        if (once) {
            // Catching up is measured by committed offsets: commit often.
            props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        }

        Topology topology = topology(topic, new SingleObjectSerde(schema), !once);
        try (KafkaStreams streams = new KafkaStreams(topology, props)) {
            streams.setUncaughtExceptionHandler(e -> {
                e.printStackTrace();
                return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
            });
            if (once) {
                System.exit(printWhenCaughtUp(streams, props, topic,
                        Duration.ofSeconds(Long.parseLong(flags.getOrDefault("timeout-s", "60")))));
            }
            CountDownLatch stopped = new CountDownLatch(1);
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                streams.close(Duration.ofSeconds(10));
                stopped.countDown();
            }, "fleet-table-shutdown"));
            streams.start();
            stopped.await();
        }
    }

    /** Run until the committed offsets reach the end offsets seen at start; print the table; 0 or 1. */
    private static int printWhenCaughtUp(KafkaStreams streams, Properties props, String topic, Duration timeout)
            throws IOException, InterruptedException, ExecutionException {
        String appId = props.getProperty(StreamsConfig.APPLICATION_ID_CONFIG);
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG,
                props.getProperty(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG)))) {
            Map<TopicPartition, Long> ends = endOffsets(admin, topic);
            streams.start();
            long deadline = System.nanoTime() + timeout.toNanos();
            while (!caughtUp(admin, appId, ends)) {
                KafkaStreams.State state = streams.state();
                if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING
                        || state == KafkaStreams.State.PENDING_SHUTDOWN) {
                    System.err.println("fleet-table: Kafka Streams stopped (" + state + ")");
                    return 1;
                }
                if (System.nanoTime() > deadline) {
                    System.err.println("fleet-table: not caught up with " + ends + " within " + timeout);
                    return 1;
                }
                Thread.sleep(100);
            }
            ReadOnlyKeyValueStore<String, GenericRecord> store = store(streams, deadline);
            Map<String, Object> table = new TreeMap<>();
            try (KeyValueIterator<String, GenericRecord> all = store.all()) {
                while (all.hasNext()) {
                    KeyValue<String, GenericRecord> entry = all.next();
                    if (live(entry.value)) {
                        table.put(entry.key, describe(entry.value));
                    }
                }
            }
            System.out.println(new ObjectMapper().writeValueAsString(table));
            return 0;
        } finally {
            streams.close(Duration.ofSeconds(10));
            streams.cleanUp();
        }
    }

    private static Map<TopicPartition, Long> endOffsets(Admin admin, String topic)
            throws InterruptedException, ExecutionException {
        int partitions = admin.describeTopics(java.util.List.of(topic)).allTopicNames().get().get(topic)
                .partitions().size();
        Map<TopicPartition, OffsetSpec> request = new HashMap<>();
        for (int p = 0; p < partitions; p++) {
            request.put(new TopicPartition(topic, p), OffsetSpec.latest());
        }
        return admin.listOffsets(request).all().get().entrySet().stream()
                .collect(Collectors.toMap(Map.Entry::getKey, e -> e.getValue().offset()));
    }

    private static boolean caughtUp(Admin admin, String appId, Map<TopicPartition, Long> ends)
            throws InterruptedException, ExecutionException {
        Map<TopicPartition, OffsetAndMetadata> committed =
                admin.listConsumerGroupOffsets(appId).partitionsToOffsetAndMetadata().get();
        return ends.entrySet().stream().allMatch(e -> e.getValue() == 0
                || (committed.get(e.getKey()) != null && committed.get(e.getKey()).offset() >= e.getValue()));
    }

    /** The table's store; it becomes queryable once the instance is RUNNING. */
    private static ReadOnlyKeyValueStore<String, GenericRecord> store(KafkaStreams streams, long deadline)
            throws InterruptedException {
        while (true) {
            try {
                return streams.store(StoreQueryParameters.fromNameAndType(STORE, QueryableStoreTypes.keyValueStore()));
            } catch (org.apache.kafka.streams.errors.InvalidStateStoreException e) {
                if (System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    private static Map<String, String> parseFlags(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                usage("unexpected argument " + args[i]);
            }
            String name = args[i].substring(2);
            if (name.equals("print-when-caught-up")) {
                out.put(name, "true");
            } else if (i + 1 < args.length) {
                out.put(name, args[++i]);
            } else {
                usage("--" + name + " needs a value");
            }
        }
        return out;
    }

    private static String required(Map<String, String> flags, String name) {
        String value = flags.get(name);
        if (value == null) {
            usage("missing --" + name);
        }
        return value;
    }

    private static void usage(String message) {
        System.err.println("fleet-table: " + message);
        System.err.println("usage: fleet-table --bootstrap-servers B --schema domain_record.avsc "
                + "[--topic libvirt.domains] [--application-id ID] [--state-dir DIR] "
                + "[--print-when-caught-up [--timeout-s 60]]");
        System.exit(2);
    }
}
