import DelrecFFI
import DelrecMobile
import Foundation

/// The screen's state and flows, as in the Android sample: the engine opened once, a session whose
/// history grows with each tap (each tap pushes, then re-ranks), rankings cancelled when a newer
/// one replaces them or the screen goes away, items added to the catalog at run time.
@MainActor
final class RecommenderModel: ObservableObject {
    struct Pick: Identifiable, Hashable {
        let id: String
        let title: String
    }

    @Published private(set) var status = "Starting…"
    @Published private(set) var loadProgress: Float?
    @Published private(set) var catalog: [Pick] = []
    @Published private(set) var catalogSize: Int64 = 0
    @Published private(set) var history: [Pick] = []
    @Published private(set) var ranking: [ScoredItem] = []
    /// 0...1 while a ranking runs; nil when none does.
    @Published private(set) var rankProgress: Double?
    @Published private(set) var rankInfo: String?
    @Published private(set) var errorText: String?

    private var engine: Engine?
    private var session: Session?
    private var rankTask: Task<Void, Never>?
    private var taps: AsyncStream<Pick>.Continuation?

    private static let topK: Int32 = 10
    private static let shown: Int64 = 200 // catalog rows listed

    /// Opens the engine (once), then handles taps in order until the calling task is cancelled:
    /// SwiftUI's `.task` cancels it when the view goes away, and that cancels the running ranking.
    func run() async {
        defer { rankTask?.cancel() }
        if engine == nil {
            guard await open() else { return }
        }
        guard let session else { return }
        let stream = AsyncStream<Pick> { taps = $0 }
        defer { taps = nil }
        for await pick in stream {
            rankTask?.cancel()
            await rankTask?.value // the session serializes calls: let the stale ranking return first
            do {
                try await session.push(pick.id)
            } catch {
                show(error, while: "Adding \(pick.title)")
                continue
            }
            history.append(pick)
            rankTask = Task {
                await showRanking("Session") {
                    try await session.rank(
                        RankRequest(topK: Self.topK, excludeHistory: true), progress: self.progressHandler())
                }
            }
        }
    }

    func tap(_ pick: Pick) {
        taps?.yield(pick)
    }

    /// Ranks the whole catalog for the history, showing progress.
    func rankWholeCatalog() {
        guard let engine, !history.isEmpty else { return }
        let request = RankRequest(history: history.map(\.id), topK: Self.topK, excludeHistory: true)
        let previous = rankTask
        previous?.cancel()
        rankTask = Task {
            await previous?.value
            await showRanking("Whole catalog") {
                try await engine.rank(request, progress: self.progressHandler())
            }
        }
    }

    func cancelRanking() {
        rankTask?.cancel()
    }

    /// A live catalog: an item typed by the user, ranked like the pack's own from the next ranking on.
    func addItem(title: String) {
        let title = title.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let engine, !title.isEmpty else { return }
        let id = "user:" + title.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber }).joined(separator: "-")
        Task {
            do {
                let added = try await engine.add(itemId: id, title: title)
                catalog.insert(Pick(id: id, title: title), at: 0)
                catalogSize += 1
                status = "Added \"\(title)\" (catalog index \(added.index))"
                errorText = nil
            } catch {
                show(error, while: "Adding \"\(title)\"")
            }
        }
    }

    private func open() async -> Bool {
        // Files in the app bundle are real files, which the engine can memory-map in place.
        guard let model = Bundle.main.url(forResource: "model", withExtension: "gguf"),
              let pack = Bundle.main.url(forResource: "pack", withExtension: "gguf")
        else {
            status = "model.gguf and pack.gguf are not in the app (see ios/Sample/README.md)"
            return false
        }
        status = "Loading the model…"
        loadProgress = 0
        defer { loadProgress = nil }
        var config = EngineConfig()
        config.threads = 4
        // The model's verified sha256 is remembered here, so later launches skip hashing it.
        config.digestCacheDir = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask).first?.path
        do {
            let engine = try await Engine.open(model: model, pack: pack, config: config) { fraction in
                Task { @MainActor in
                    if self.loadProgress != nil { self.loadProgress = fraction } // not after the load ended
                }
            }
            // A session holds one of the engine's contexts and keeps the history decoded: after a
            // push, the next ranking decodes only the new item.
            let session = try await engine.openSession()
            self.engine = engine
            self.session = session
            catalogSize = engine.catalogSize()
            // Lookups in the pack's catalog: fast enough for the main actor.
            catalog = try (0..<Int32(min(catalogSize, Self.shown))).map { index in
                let item = try engine.itemAt(index: index)
                return Pick(id: item.id, title: item.title)
            }
            status = "Ready: tap items to build a history"
            return true
        } catch is CancellationError {
            return false // the view went away while loading
        } catch {
            status = "Could not open the model"
            show(error, while: "Opening")
            return false
        }
    }

    private func showRanking(_ label: String, _ rank: () async throws -> Ranking) async {
        rankProgress = 0
        defer { rankProgress = nil }
        let start = Date()
        do {
            let result = try await rank()
            let ms = Int(Date().timeIntervalSince(start) * 1000)
            ranking = result.items
            rankInfo = "\(label): \(result.stats.candidates) candidates, \(result.stats.decodedRows) rows decoded, \(ms) ms"
            errorText = nil
        } catch is CancellationError {
            // Replaced by a newer ranking, cancelled by the user, or the screen went away.
        } catch {
            show(error, while: "Ranking")
        }
    }

    /// Progress arrives on the ranking thread; the UI state changes on the main actor.
    private func progressHandler() -> @Sendable (RankProgress) -> Void {
        { progress in
            let fraction = progress.plannedRows > 0 ? Double(progress.decodedRows) / Double(progress.plannedRows) : 0
            Task { @MainActor in
                if self.rankProgress != nil { self.rankProgress = min(fraction, 1) }
            }
        }
    }

    private func show(_ error: Error, while what: String) {
        // DelrecError's localizedDescription is the runtime's sentence (DelrecMobile's LocalizedError).
        errorText = "\(what): \(error.localizedDescription)"
    }
}
