package dev.bridge.oracle;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.JsonDecoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Independent oracles for the bridge's wire format and partitioning: Apache Avro's and Apache Kafka's
 * own Java code, deliberately not a port of it, so a Python bug cannot hide behind a Python check.
 *
 * <pre>
 * golden SCHEMA.avsc DATUM.json OTHER.bin|- [SCHEMA.avsc DATUM.json OTHER.bin|- ...]
 *     per triple, one JSON line: the schema's CRC-64-AVRO parsing fingerprint and the single-object
 *     encoding (BinaryMessageEncoder) of the Avro-JSON datum, both as hex; and whether OTHER.bin (another
 *     writer's single-object encoding of the same datum) decodes with BinaryMessageDecoder to an equal
 *     datum. Avro does not fix the order of map entries, so that is how encodings of maps with more
 *     than one entry are compared.
 * check-topics --bootstrap-servers B --domains-topic T --hosts-topic T --domain-schema F --host-schema F
 *     reads both topics up to the end offsets seen at start, decodes every value with
 *     BinaryMessageDecoder built from the .avsc files alone, checks the key equals the record's
 *     uuid/host and that each message sits in the partition Kafka's producer picks for its key.
 *     Prints one JSON summary line; exit status 1 on any failure.
 * </pre>
 *
 * Usage errors exit with status 2.
 */
public final class Oracle {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final HexFormat HEX = HexFormat.of();
    private static final int EXAMPLES = 5;

    private Oracle() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage("missing command: golden or check-topics");
        }
        String[] rest = java.util.Arrays.copyOfRange(args, 1, args.length);
        switch (args[0]) {
            case "golden" -> golden(rest);
            case "check-topics" -> System.exit(checkTopics(rest));
            default -> usage("unknown command " + args[0]);
        }
    }

    private static void usage(String message) {
        System.err.println("oracle: " + message);
        System.err.println("usage: golden SCHEMA.avsc DATUM.json [...] | check-topics --bootstrap-servers B "
                + "--domains-topic T --hosts-topic T --domain-schema F --host-schema F [--timeout-s N]");
        System.exit(2);
    }

    /** Each file with a parser of its own: both schemas define io.libvirt_kafka_bridge.AgentInfo. */
    private static Schema parse(String path) throws IOException {
        return new Schema.Parser().parse(Path.of(path).toFile());
    }

    // -- golden ------------------------------------------------------------------------------------

    private static void golden(String[] args) throws IOException, java.security.NoSuchAlgorithmException {
        if (args.length == 0 || args.length % 3 != 0) {
            usage("golden needs SCHEMA.avsc DATUM.json OTHER.bin|- triples");
        }
        for (int i = 0; i < args.length; i += 3) {
            Schema schema = parse(args[i]);
            GenericRecord datum;
            try (InputStream in = Files.newInputStream(Path.of(args[i + 1]))) {
                JsonDecoder decoder = DecoderFactory.get().jsonDecoder(schema, in);
                datum = new GenericDatumReader<GenericRecord>(schema).read(null, decoder);
            }
            ByteArrayOutputStream buffer = new ByteArrayOutputStream();
            new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(datum, buffer);
            byte[] encoded = buffer.toByteArray();
            BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("schema", args[i]);
            out.put("full_name", schema.getFullName());
            out.put("fingerprint", HEX.formatHex(SchemaNormalization.parsingFingerprint("CRC-64-AVRO", schema)));
            out.put("canonical_form", SchemaNormalization.toParsingForm(schema));
            out.put("encoding", HEX.formatHex(encoded));
            // Round trip through the decoder as well: the encoding must name a schema it knows.
            out.put("round_trip_equal", decoder.decode(encoded).equals(datum));
            if (!args[i + 2].equals("-")) {
                try {
                    out.put("other_equal", decoder.decode(Files.readAllBytes(Path.of(args[i + 2]))).equals(datum));
                    out.put("other_error", null);
                } catch (Exception e) {
                    out.put("other_equal", false);
                    out.put("other_error", e.getClass().getSimpleName() + ": " + e.getMessage());
                }
            }
            System.out.println(JSON.writeValueAsString(out));
        }
    }

    // -- check-topics ------------------------------------------------------------------------------

    private static Map<String, String> flags(String[] args, List<String> required) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                usage("bad argument " + args[i]);
            }
            out.put(args[i].substring(2), args[i + 1]);
        }
        for (String name : required) {
            if (!out.containsKey(name)) {
                usage("missing --" + name);
            }
        }
        return out;
    }

    private static int checkTopics(String[] args) throws IOException {
        Map<String, String> f = flags(args,
                List.of("bootstrap-servers", "domains-topic", "hosts-topic", "domain-schema", "host-schema"));
        Duration timeout = Duration.ofSeconds(Long.parseLong(f.getOrDefault("timeout-s", "60")));
        Map<String, Object> topics = new LinkedHashMap<>();
        boolean ok = true;
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, f.get("bootstrap-servers"));
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        // Manual assignment, no group.id: nothing is joined or committed.
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, "bridge-java-oracle");
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            TopicCheck domains = new TopicCheck(f.get("domains-topic"), parse(f.get("domain-schema")), "uuid");
            TopicCheck hosts = new TopicCheck(f.get("hosts-topic"), parse(f.get("host-schema")), "host");
            for (TopicCheck check : List.of(domains, hosts)) {
                check.run(consumer, timeout);
                topics.put(check.topic, check.summary());
                ok &= check.ok();
            }
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("ok", ok);
        out.put("topics", topics);
        System.out.println(JSON.writeValueAsString(out));
        return ok ? 0 : 1;
    }

    /** Reads one topic to the end offsets seen at start and checks every message. */
    private static final class TopicCheck {
        final String topic;
        final String keyField;
        final BinaryMessageDecoder<GenericRecord> decoder;
        int partitions;
        Map<Integer, Long> endOffsets = new LinkedHashMap<>();
        long messages;
        long decoded;
        long tombstones;
        long decodeFailures;
        long keyMismatch;
        long wrongPartition;
        long nullKeys;
        String error;
        final List<String> decodeErrors = new ArrayList<>();
        final List<String> keyMismatchExamples = new ArrayList<>();
        final List<String> wrongPartitionExamples = new ArrayList<>();

        TopicCheck(String topic, Schema schema, String keyField) {
            this.topic = topic;
            this.keyField = keyField;
            // Built from the .avsc alone: the only writer schema it knows is this one.
            this.decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
        }

        void run(KafkaConsumer<byte[], byte[]> consumer, Duration timeout) {
            List<PartitionInfo> infos = consumer.partitionsFor(topic, Duration.ofSeconds(30));
            if (infos == null || infos.isEmpty()) {
                error = "topic not found";
                return;
            }
            partitions = infos.size();
            List<TopicPartition> tps = infos.stream().map(p -> new TopicPartition(topic, p.partition()))
                    .sorted((a, b) -> Integer.compare(a.partition(), b.partition())).collect(Collectors.toList());
            Map<TopicPartition, Long> ends = consumer.endOffsets(tps, Duration.ofSeconds(30));
            tps.forEach(tp -> endOffsets.put(tp.partition(), ends.get(tp)));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            long deadline = System.nanoTime() + timeout.toNanos();
            while (tps.stream().anyMatch(tp -> consumer.position(tp) < ends.get(tp))) {
                if (System.nanoTime() > deadline) {
                    error = "timed out before the end offsets " + endOffsets;
                    return;
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    if (r.offset() < ends.get(new TopicPartition(r.topic(), r.partition()))) {
                        check(r);
                    }
                }
            }
            consumer.unsubscribe();
        }

        void check(ConsumerRecord<byte[], byte[]> r) {
            messages++;
            String where = "p" + r.partition() + "@" + r.offset();
            if (r.key() == null) {
                nullKeys++;
            } else {
                // What the Java producer's default partitioning does for a keyed record:
                // Utils.toPositive(Utils.murmur2(key)) % numPartitions.
                int expected = BuiltInPartitioner.partitionForKey(r.key(), partitions);
                if (expected != r.partition()) {
                    wrongPartition++;
                    example(wrongPartitionExamples, where + " key " + key(r) + " belongs in p" + expected);
                }
            }
            if (r.value() == null) {
                tombstones++;
                return;
            }
            GenericRecord record;
            try {
                record = decoder.decode(r.value());
            } catch (Exception e) {
                decodeFailures++;
                example(decodeErrors, where + ": " + e.getClass().getSimpleName() + ": " + e.getMessage());
                return;
            }
            decoded++;
            Object field = record.get(keyField);
            if (r.key() == null || field == null || !field.toString().equals(key(r))) {
                keyMismatch++;
                example(keyMismatchExamples, where + " key " + key(r) + " but " + keyField + " " + field);
            }
        }

        static String key(ConsumerRecord<byte[], byte[]> r) {
            return r.key() == null ? null : new String(r.key(), StandardCharsets.UTF_8);
        }

        static void example(List<String> list, String text) {
            if (list.size() < EXAMPLES) {
                list.add(text);
            }
        }

        boolean ok() {
            return error == null && decodeFailures == 0 && keyMismatch == 0 && wrongPartition == 0 && nullKeys == 0
                    && decoded + tombstones == messages;
        }

        Map<String, Object> summary() {
            Map<String, Object> s = new LinkedHashMap<>();
            s.put("ok", ok());
            s.put("error", error);
            s.put("partitions", partitions);
            s.put("end_offsets", endOffsets);
            s.put("messages", messages);
            s.put("decoded", decoded);
            s.put("tombstones", tombstones);
            s.put("decode_failures", decodeFailures);
            s.put("decode_errors", decodeErrors);
            s.put("key_mismatch", keyMismatch);
            s.put("key_mismatch_examples", keyMismatchExamples);
            s.put("null_keys", nullKeys);
            s.put("wrong_partition", wrongPartition);
            s.put("wrong_partition_examples", wrongPartitionExamples);
            return s;
        }
    }
}
