// The generated Kotlin bindings called from Java, as a Java app would: no Kotlin-only names
// (UInt/ULong would mangle them, e.g. `itemAt-WZ4Q5Ns`), setters on the config, typed errors.
// Same environment as DelrecTest.kt; scores are compared with `delrec rank --json`.

import dev.delrec.*;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class JavaTest {
    static int passed = 0, failed = 0;

    interface Body { void run() throws Exception; }

    static void test(String name, Body body) {
        try {
            body.run();
            passed++;
            System.out.println("PASS  " + name);
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL  " + name + ": " + t);
            t.printStackTrace(System.out);
        }
    }

    static void check(boolean cond, String msg) {
        if (!cond) throw new AssertionError(msg);
    }

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null) throw new IllegalStateException("set " + name);
        return v;
    }

    static RankRequest request(List<String> history, List<String> candidates, Integer topK, CancelToken cancel) {
        // A record from Java: every field, in order (Kotlin's defaults are not visible here).
        return new RankRequest(history, candidates, topK, null, false, false, null, cancel, null, null, new ArrayList<>());
    }

    /** `delrec rank --json` scores, in order. */
    static List<Object[]> cliRank(String cli, String model, String pack, List<String> history) throws Exception {
        List<String> cmd = new ArrayList<>(Arrays.asList(cli, "rank", "--model", model, "--pack", pack, "--threads", "2",
            "--json", "--history", String.join(",", history)));
        Process p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        StringBuilder out = new StringBuilder();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream()))) {
            for (String line; (line = r.readLine()) != null; ) out.append(line).append('\n');
        }
        check(p.waitFor(120, TimeUnit.SECONDS) && p.exitValue() == 0, "delrec rank failed");
        List<Object[]> ref = new ArrayList<>();
        Matcher ids = Pattern.compile("\"id\":\\s*\"([^\"]*)\"").matcher(out);
        Matcher scores = Pattern.compile("\"score\":\\s*(-?[0-9.eE+-]+)").matcher(out);
        while (ids.find() && scores.find()) ref.add(new Object[] {ids.group(1), Double.parseDouble(scores.group(1))});
        check(!ref.isEmpty(), "could not parse the CLI output");
        return ref;
    }

    public static void main(String[] args) throws Exception {
        String model = env("DELREC_MODEL"), pack = env("DELREC_PACK"), cli = env("DELREC_CLI");
        List<String> history = Arrays.asList("m001", "m002");
        EngineConfig config = Delrec_ffiKt.defaultEngineConfig();
        config.setThreads(2);
        Engine engine = Engine.Companion.open(model, pack, config);

        test("rank from Java equals the CLI", () -> {
            Ranking r = engine.rank(request(history, null, null, null));
            List<Object[]> ref = cliRank(cli, model, pack, history);
            check(r.getItems().size() == ref.size(), r.getItems().size() + " items, CLI " + ref.size());
            for (int i = 0; i < ref.size(); i++) {
                ScoredItem it = r.getItems().get(i);
                double want = (Double) ref.get(i)[1];
                check(Math.abs(it.getScore() - want) <= 1e-4, it.getId() + ": " + it.getScore() + " vs " + want);
            }
            long decodes = r.getStats().getDecodeCalls();
            check(decodes > 0, "no decodes counted");
        });

        test("catalog lookups with int indexes", () -> {
            long n = engine.catalogSize();
            CatalogItem first = engine.itemAt(0);
            int index = first.getIndex();
            check(n > 0 && index == 0 && engine.item(first.getId()).equals(first), first.toString());
            try {
                engine.itemAt((int) n);
                throw new AssertionError("itemAt(size) did not throw");
            } catch (DelrecException.BadRequest e) {
                check(e.getKind() == BadRequestKind.INVALID_ARGUMENT && "index".equals(e.getField()), e.toString());
            }
        });

        test("typed errors are catchable by group", () -> {
            try {
                engine.rank(request(Arrays.asList("no-such-item"), null, null, null));
                throw new AssertionError("no error");
            } catch (DelrecException.BadRequest e) {
                check(e.getKind() == BadRequestKind.UNKNOWN_ITEM && "no-such-item".equals(e.getItemId()), e.toString());
            }
            try {
                Engine.Companion.open("/nonexistent/m.gguf", pack, config);
                throw new AssertionError("no error");
            } catch (DelrecException.BadFile e) {
                check(e.getKind() == BadFileKind.IO, e.toString());
            }
            try {
                CancelToken t = new CancelToken();
                t.cancel();
                engine.rank(request(history, null, 3, t));
                throw new AssertionError("no error");
            } catch (DelrecException.Cancelled e) {
                check(e.getReason().equals("cancelled"), e.getReason());
            }
        });

        test("progress listener and a session from Java", () -> {
            AtomicInteger reports = new AtomicInteger();
            ProgressListener listener = p -> reports.incrementAndGet();
            RankRequest req = new RankRequest(history, null, 5, null, false, false, null, null, null, listener, new ArrayList<>());
            Ranking r = engine.rank(req);
            check(reports.get() == r.getStats().getDecodeCalls(), reports.get() + " reports");
            try (Session s = engine.session(null)) {
                s.push("m001");
                s.push("m002");
                Ranking viaSession = s.rank(request(new ArrayList<>(), null, 5, null));
                for (int i = 0; i < 5; i++) {
                    check(viaSession.getItems().get(i).getId().equals(r.getItems().get(i).getId()), "session order differs at " + i);
                }
            }
        });

        engine.close();
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
