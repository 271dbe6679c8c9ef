// Sample wallet API behind a meshgate sidecar, JDK only (com.sun.net.httpserver, java.net.http).
//
//   javac -d out Wallet.java
//   PORT=8080 EGRESS=127.0.0.1:15001 PEER_HOST=wallet-peer.internal java -cp out Wallet
//   java -cp out Wallet [PORT [EGRESS]]

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Executors;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class Wallet {
    private static final int MAX_BODY = 1024 * 1024;
    private static final Pattern LOGIN_USER =
            Pattern.compile("\"user\"\\s*:\\s*\"([^\"\\\\\\x00-\\x1f]+)\"");

    private final String egress;
    private final String peerHost;
    private final HttpClient client;

    private Wallet(String egress, String peerHost) {
        this.egress = egress;
        this.peerHost = peerHost;
        this.client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(5))
                .build();
    }

    public static void main(String[] args) throws IOException {
        // The peer call names the service in Host while connecting to the egress
        // listener; the JDK client refuses a custom Host unless allowed up front.
        System.setProperty("jdk.httpclient.allowRestrictedHeaders", "host");
        // Idle keep-alive connections must outlive the sidecar's pool idle
        // timeout (90s by default); the JDK server's default is 30s.
        System.setProperty("sun.net.httpserver.idleInterval", "120");
        // Headers and body are written separately; without TCP_NODELAY each
        // response can stall on Nagle plus delayed ACKs (~40ms).
        System.setProperty("sun.net.httpserver.nodelay", "true");

        int port = Integer.parseInt(args.length > 0 ? args[0] : env("PORT", "8080"));
        String host = env("HOST", "127.0.0.1");
        String egress = args.length > 1 ? args[1] : env("EGRESS", "127.0.0.1:15001");
        String peerHost = env("PEER_HOST", "wallet-peer.internal");

        Wallet wallet = new Wallet(egress, peerHost);
        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 1024);
        server.createContext("/", wallet::dispatch);
        server.setExecutor(Executors.newCachedThreadPool());
        server.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> server.stop(1)));
        System.err.printf("wallet (java) listening on %s:%d, egress %s, peer %s%n",
                host, port, egress, peerHost);
    }

    private static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    private void dispatch(HttpExchange ex) throws IOException {
        try (ex) {
            String route = ex.getRequestMethod() + " " + ex.getRequestURI().getPath();
            byte[] body = readBody(ex.getRequestBody());
            if (body == null) {
                send(ex, 413, "{\"error\":\"body too large\"}");
                return;
            }
            String user = ex.getRequestHeaders().getFirst("x-meshgate-user");
            switch (route) {
                case "GET /healthz" -> send(ex, 200, "text/plain", "ok");
                case "POST /login" -> login(ex, body);
                case "GET /api/balance" -> send(ex, 200, "{\"user\":" + json(user)
                        + ",\"client_id\":" + json(ex.getRequestHeaders().getFirst("x-meshgate-client-id"))
                        + ",\"balance\":100"
                        + ",\"host\":" + json(ex.getRequestHeaders().getFirst("host"))
                        + ",\"meshgate_headers\":" + meshgateHeaders(ex) + "}");
                case "POST /api/transfer" -> send(ex, 200,
                        "{\"ok\":true,\"received\":" + body.length + ",\"user\":" + json(user) + "}");
                case "GET /api/peer" -> peer(ex);
                default -> send(ex, 404, "{\"error\":\"not found\",\"path\":"
                        + json(ex.getRequestURI().getPath()) + "}");
            }
        }
    }

    private void login(HttpExchange ex, byte[] body) throws IOException {
        Matcher m = LOGIN_USER.matcher(new String(body, StandardCharsets.UTF_8));
        if (!m.find()) {
            send(ex, 400, "{\"error\":\"body must be {\\\"user\\\": \\\"<id>\\\"}\"}");
            return;
        }
        String user = m.group(1);
        ex.getResponseHeaders().set("x-meshgate-session-set",
                "{\"sub\":" + json(user) + ",\"claims\":{\"tenant\":\"t-1\"},\"ttl\":\"2h\"}");
        send(ex, 200, "{\"ok\":true,\"user\":" + json(user) + "}");
    }

    private void peer(HttpExchange ex) throws IOException {
        HttpRequest request = HttpRequest.newBuilder(URI.create("http://" + egress + "/api/balance"))
                .header("Host", peerHost)
                .timeout(Duration.ofSeconds(5))
                .GET()
                .build();
        try {
            HttpResponse<String> rsp = client.send(request, HttpResponse.BodyHandlers.ofString());
            send(ex, 200, "{\"peer_status\":" + rsp.statusCode() + ",\"peer_body\":" + json(rsp.body()) + "}");
        } catch (IOException | IllegalArgumentException e) {
            send(ex, 502, "{\"error\":\"peer_unreachable\",\"detail\":" + json(String.valueOf(e)) + "}");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            send(ex, 502, "{\"error\":\"peer_unreachable\",\"detail\":\"interrupted\"}");
        }
    }

    private static String meshgateHeaders(HttpExchange ex) {
        // Header names are case-insensitive: report them lowercased, repeats joined.
        Map<String, String> seen = new TreeMap<>();
        for (Map.Entry<String, List<String>> e : ex.getRequestHeaders().entrySet()) {
            String name = e.getKey().toLowerCase(Locale.ROOT);
            if (name.startsWith("x-meshgate-")) {
                seen.merge(name, String.join(", ", e.getValue()), (a, b) -> a + ", " + b);
            }
        }
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, String> e : seen.entrySet()) {
            if (out.length() > 1) out.append(',');
            out.append(json(e.getKey())).append(':').append(json(e.getValue()));
        }
        return out.append('}').toString();
    }

    /** The whole body, or null if it exceeds MAX_BODY. */
    private static byte[] readBody(InputStream in) throws IOException {
        byte[] body = in.readNBytes(MAX_BODY + 1);
        if (body.length > MAX_BODY) {
            in.transferTo(OutputStream.nullOutputStream());
            return null;
        }
        return body;
    }

    private static void send(HttpExchange ex, int status, String json) throws IOException {
        send(ex, status, "application/json", json);
    }

    private static void send(HttpExchange ex, int status, String contentType, String text) throws IOException {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("content-type", contentType);
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }

    private static String json(String s) {
        if (s == null) return "null";
        StringBuilder out = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> {
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
                }
            }
        }
        return out.append('"').toString();
    }
}
