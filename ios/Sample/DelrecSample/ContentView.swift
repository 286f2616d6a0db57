import DelrecFFI
import SwiftUI

struct ContentView: View {
    @StateObject private var model = RecommenderModel()
    @State private var newTitle = ""

    var body: some View {
        NavigationView {
            List {
                Section {
                    Text(model.status)
                    if let progress = model.loadProgress { ProgressView(value: Double(progress)) }
                    if let error = model.errorText { Text(error).foregroundColor(.red) }
                }
                Section("History") {
                    Text(model.history.isEmpty ? "Tap an item below" : model.history.map(\.title).joined(separator: " → "))
                    HStack {
                        Button("Rank catalog") { model.rankWholeCatalog() }
                            .disabled(model.history.isEmpty)
                        Spacer()
                        Button("Cancel", role: .cancel) { model.cancelRanking() }
                            .disabled(model.rankProgress == nil)
                    }
                    .buttonStyle(.borderless) // two buttons in one row, each tappable on its own
                    if let progress = model.rankProgress { ProgressView(value: progress) }
                    if let info = model.rankInfo { Text(info).font(.footnote) }
                }
                Section("Add an item") {
                    HStack {
                        TextField("Title", text: $newTitle)
                        Button("Add") {
                            model.addItem(title: newTitle)
                            newTitle = ""
                        }
                        .disabled(newTitle.trimmingCharacters(in: .whitespaces).isEmpty)
                    }
                }
                if !model.ranking.isEmpty {
                    Section("Recommended") {
                        ForEach(model.ranking, id: \.id) { item in
                            Button { model.tap(.init(id: item.id, title: item.title)) } label: {
                                HStack {
                                    Text(item.title)
                                    Spacer()
                                    Text(String(format: "%.3f", item.score)).foregroundColor(.secondary)
                                }
                            }
                        }
                    }
                }
                Section("Catalog (\(model.catalogSize) items)") {
                    ForEach(model.catalog) { pick in
                        Button(pick.title) { model.tap(pick) }
                    }
                }
            }
            .navigationTitle("delrec")
        }
        .navigationViewStyle(.stack)
        // Runs while the view is on screen; cancelled (with the ranking in flight) when it goes away.
        .task { await model.run() }
    }
}
