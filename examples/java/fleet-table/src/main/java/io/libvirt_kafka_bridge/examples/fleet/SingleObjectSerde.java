package io.libvirt_kafka_bridge.examples.fleet;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;

/**
 * A Kafka Serde for Avro single-object encoding ({@code C3 01}, the schema's 8-byte CRC-64-AVRO
 * fingerprint, Avro binary), the bridge's default wire format. Needs nothing but the {@code .avsc}
 * schema: no registry. A null value (a tombstone) stays null.
 *
 * <p>The decoder knows exactly one writer schema, the one given. A record written with another schema
 * (a newer bridge that added fields) fails with {@link SerializationException}; to read those, add
 * their schemas with {@link BinaryMessageDecoder#addSchema(Schema)}.
 */
public final class SingleObjectSerde implements Serde<GenericRecord> {
    private final BinaryMessageEncoder<GenericRecord> encoder;
    private final BinaryMessageDecoder<GenericRecord> decoder;

    public SingleObjectSerde(Schema schema) {
        this.encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
        this.decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
    }

    @Override
    public Serializer<GenericRecord> serializer() {
        return (topic, record) -> {
            if (record == null) {
                return null;
            }
            try {
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                encoder.encode(record, out);
                return out.toByteArray();
            } catch (IOException e) {
                throw new SerializationException("cannot encode a record for " + topic, e);
            }
        };
    }

    @Override
    public Deserializer<GenericRecord> deserializer() {
        return (topic, data) -> {
            if (data == null) {
                return null;
            }
            try {
                return decoder.decode(data);
            } catch (IOException | RuntimeException e) {
                throw new SerializationException("not a single-object encoded record of this schema on " + topic, e);
            }
        };
    }
}
